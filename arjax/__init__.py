"""arjax: autoregressive image generation in JAX/Flax (VAR and its family)."""
from arjax.pipeline import Pipeline, Tokenizer, build, load, load_tokenizer, save

__version__ = "0.1.0"
__all__ = ["Pipeline", "Tokenizer", "build", "load", "load_tokenizer", "save", "__version__"]
