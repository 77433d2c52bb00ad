"""The cloud controller: the EC2-compatible front end of the cloud."""
