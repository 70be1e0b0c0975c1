"""ONNX export of models that use NHA (installed as ``nha_tvm.export``); see issue 5."""
