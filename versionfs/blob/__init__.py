"""Content-addressed blobs: pointers, codec, and the stores that keep them."""
