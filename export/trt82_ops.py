"""What the ONNX parser of TensorRT 8.2 (JetPack 4.6, Jetson Nano) accepts, as data for `export.lint`.

Source: onnx-tensorrt ``docs/operators.md`` ("TensorRT 8.4 supports operators up to Opset 13", the same table
layout as 8.2 GA) with the operators its Changelog says 8.4 added (``Xor``; ``Shrink`` is already "N" there)
taken out, plus the restrictions of that table and of ``docs/jetson-nano.md``. Later additions (8.5: NonZero,
Mod, RoiAlign, GridSample, Trilu, MeanVarianceNormalization, RandomNormal, native NonMaxSuppression; 8.6:
LayerNormalization, GroupNormalization, IsInf) are deliberately absent.

Plain data, no imports: the lint reads it, and a reviewer can diff it against the upstream table.
"""

MAX_OPSET = 13

# Operators the 8.2 parser imports (default ONNX domain).
SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout Einsum
Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GRU HardSigmoid Identity If ImageScaler InstanceNormalization IsNaN LeakyRelu
Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean Min Mul Neg
NonMaxSuppression Not Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomUniform RandomUniformLike Range
ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare
Relu Reshape Resize ReverseSequence RNN Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Sigmoid
Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu
Tile TopK Transpose Unsqueeze Upsample Where
""".split())

# Refused even where the parser has an importer: the project's rules (jetson-nano.md) and why.
FORBIDDEN_OPS = {
    "NonMaxSuppression": "only experimental in TensorRT 8.2; do NMS on the CPU (runtime/nms.py) or use the "
                         "EfficientNMS_TRT plugin",
    "NonZero": "not supported by TensorRT 8.2 (added in 8.5) and data-dependent: remove it from the graph",
    "RoiAlign": "not supported by TensorRT 8.2 (added in 8.5)",
    "Mod": "not supported by TensorRT 8.2 (added in 8.5)",
}

# (op, input index, what): inputs that must be initializers or Constant outputs for the 8.2 parser.
CONSTANT_INPUTS = (
    ("Conv", 1, "weights W"),
    ("ConvTranspose", 1, "weights W"),
    ("Slice", 3, "axes"),
    ("Squeeze", 1, "axes"),
    ("Unsqueeze", 1, "axes"),
    ("TopK", 1, "K"),
    ("CumSum", 1, "axis"),
    ("InstanceNormalization", 1, "scale"),
    ("InstanceNormalization", 2, "bias B"),
    ("Clip", 1, "min"),
    ("Clip", 2, "max"),
)

RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_COORDINATE_MODES = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                                     "align_corners"})
RESIZE_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})

# Pooling and convolution: 2D or 3D only (rank of the kernel).
SPATIAL_RANKS = (2, 3)

# ONNX TensorProto element types. The project's models use these without comment:
PLAIN_TYPES = frozenset({"FLOAT", "FLOAT16", "INT64"})
# TensorRT 8.2 handles these, but an exported detector should not contain them: a warning.
TOLERATED_TYPES = frozenset({"INT32", "BOOL", "INT8"})
# Everything else (DOUBLE, UINT8, STRING, BFLOAT16, FP8, complex, ...) is an error.
