"""The built-in reasoning testbed: tasks and verifier (`tasks`), tokenizer, base model."""
