"""The core: bus access, mapping, codec, store and write path. Internal: plugins use canbridge."""
