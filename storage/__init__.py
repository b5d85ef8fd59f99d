"""Object-store access, content-addressed stage outputs and shard formats."""
