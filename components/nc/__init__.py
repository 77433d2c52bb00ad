"""The node controller: runs instances in its VM slots."""
