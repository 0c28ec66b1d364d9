"""Policy models: the embedded tiny model, loading (local directories, GGUF), the training forward and the warm start."""
