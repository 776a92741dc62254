"""KServe V2 over gRPC (`inference.GRPCInferenceService`, plus Triton's `ModelStreamInfer`).

A transport like `service/routes/v2.py`: protobuf in and out, the checks and the work in
`service.dataplane` and `service.positioning`. `inference_pb2` is generated from
`inference.proto` by scripts/generate-grpc.
"""
