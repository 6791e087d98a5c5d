"""tpp: parameter-efficient fine-tuning of medical-imaging backbones with target parameter pre-training."""
__version__ = "0.1.0"
