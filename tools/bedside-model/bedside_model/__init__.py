"""bedside-model: from an fp32 checkpoint (ONNX file, MONAI bundle or PyTorch module) to a bedside model folder:
model.fp32.onnx, model.onnx (int8, the factory's recipe), model.toml, parity fixtures checked by bedside itself,
an optional eval gate, and a model card skeleton filled with what was measured."""

__version__ = "0.1.0"


class Refused(Exception):
    """The model cannot become a bedside model folder; the message says why. `status` is the exit status."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


class UsageError(Refused):
    """The arguments or inputs are wrong (exit status 2)."""

    def __init__(self, message):
        super().__init__(message, status=2)
