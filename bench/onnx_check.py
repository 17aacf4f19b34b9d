"""Runs exported ONNX models in onnxruntime, the reference runtime, and compares their outputs
with Sinapse's on the same inputs (the `<model>.onnx.samples.json` that
`sinapse export --samples N` writes beside each model).

    python bench/onnx_check.py runs/a.onnx runs/b.onnx ...     (needs onnxruntime and numpy)

Prints one line per model with the largest difference; exits 1 if any output differs by more
than 1e-5 (absolute, plus 1e-5 of the value's size) or a model does not load.
"""
import json
import sys

import numpy as np
import onnxruntime as ort

TOLERANCE = 1e-5
failed = 0
for path in sys.argv[1:]:
    with open(path + ".samples.json") as f:
        samples = json.load(f)
    x = np.array(samples["inputs"], dtype=np.float32).reshape([-1] + samples["input_shape"])
    want = np.array(samples["outputs"], dtype=np.float32).reshape([-1] + samples["output_shape"])
    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        (got,) = session.run(["output"], {"input": x})
    except Exception as e:  # a model the runtime refuses is a failure, with its reason
        print(f"FAILED {path}: {e}")
        failed += 1
        continue
    if got.shape != want.shape:
        print(f"FAILED {path}: output shape {got.shape}, Sinapse's {want.shape}")
        failed += 1
        continue
    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
    ok = np.allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE)
    print(f"{'ok' if ok else 'FAILED'} {path}: {x.shape[0]} samples, largest difference {diff:.2e}")
    failed += 0 if ok else 1
print(f"onnxruntime {ort.__version__}: {len(sys.argv) - 1 - failed} of {len(sys.argv) - 1} models agree with Sinapse")
sys.exit(1 if failed else 0)
