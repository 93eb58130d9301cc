"""On-device entry points for the Jetson Nano: environment setup and self-test, the benchmark, the camera demo.

    bash jetson/setup.sh [--max-perf]            # check JetPack, Python 3.6, TensorRT; build pycuda
    python3 -m jetson.selftest                   # what works here: TensorRT, pycuda, cv2 + GStreamer, ORT
    python3 -m jetson.benchmark BUNDLE           # pruned against baseline, side by side, JSON + Markdown
    python3 -m jetson.camera_demo --bundle BUNDLE --source csi://0

Device package: Python 3.6 syntax and stdlib, numpy at module level; cv2, onnxruntime, tensorrt and pycuda are
imported lazily inside functions; never imports torch, onnx or the host packages (compress/, export/).
"""
