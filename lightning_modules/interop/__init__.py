"""Reading and writing other frameworks' formats: Darknet .cfg/.weights (interop/darknet)."""
