"""ray-ltx: finetune LTX-Video (LoRA or full) on a Ray cluster."""

__version__ = "0.1.0"
