"""The pretraining methods, one class each; ``detlab.methods.registry`` maps names to them."""
