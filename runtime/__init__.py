"""Running a deploy bundle on the device: runners (ONNX Runtime, TensorRT + pycuda), pre/post-processing, NMS,
measurement.

Device package: Python 3.6 syntax; numpy at module level only; cv2, onnxruntime, tensorrt and pycuda are imported
lazily inside functions; never imports torch or onnx.
"""
