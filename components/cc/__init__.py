"""The cluster controller: scheduling, the cluster network, routing for its VMs."""
