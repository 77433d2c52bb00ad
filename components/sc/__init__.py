"""The storage controller: EBS-style volumes, exported to NCs over a TCP block protocol."""
