"""`qrerank bench`: qrerank against the official transformers recipes, same process, same checkpoint, same text."""
