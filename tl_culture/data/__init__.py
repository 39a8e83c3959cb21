"""The text: corpora, their loaders and their tokenisation into rows of token ids."""
