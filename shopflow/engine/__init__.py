"""Search, recommend and rank: the one engine behind offline evaluation and the service, its
serving bundle and its ONNX runtime."""
