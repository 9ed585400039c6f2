"""Training: fine-tuning, distillation, calibration, few-shot heads and evaluation.

Makes and measures models. May import the runtime, the model, data and the foundation; never serving, bulk,
insight or the command line. PyTorch is imported where a loop needs it, not when a module is imported.
"""
