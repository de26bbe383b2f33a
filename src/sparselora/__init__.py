"""sparselora: sparse fine-tuning methods for Hugging Face models, and honest measurements of them."""

__version__ = "0.1.0"
