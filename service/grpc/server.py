"""The gRPC server: KServe V2 calls over the same store, positioning core, auth and metrics.

It runs on the API's own event loop (started in the app's lifespan), so `/locate`, V2
HTTP and gRPC share one `Positioner` and therefore one dynamic batcher per site.

Errors are the service's own (`ServiceError`), mapped to gRPC status codes; on a stream
they travel in `ModelStreamInferResponse.error_message` and the stream goes on, as in
Triton. Each unary call and each streamed request is one observation of
`csipos_http_request_duration_seconds{protocol="grpc"}`, with the HTTP status of the
same outcome, so the dashboards' error rates and latency count gRPC too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from service import dataplane, metrics
from service.config import Settings
from service.deps import check_bearer
from service.errors import InvalidInput, ServiceError, SiteNotFound
from service.grpc import inference_pb2 as pb
from service.positioning import Positioner
from service.store import ModelStore, ServedSite

log = logging.getLogger("csipos.service.grpc")
T = TypeVar("T")

SERVICE = "inference.GRPCInferenceService"
STREAM_IN_FLIGHT = 256
"""Requests of one stream processed at once (answers still go back in request order);
reading stops there, so a fast sender meets gRPC flow control, not unbounded memory."""

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def _route(name: str) -> str:
    return f"/{SERVICE}/{name}"


def _observe(name: str, status: int, start: float) -> None:
    elapsed = time.perf_counter() - start
    metrics.HTTP_DURATION.labels("grpc", _route(name), "POST", str(status)).observe(elapsed)


def _values(tensor: pb.ModelInferRequest.InferInputTensor) -> Any:
    """A tensor's typed `contents` for its datatype (V2 has no FP16 field: raw only)."""
    if tensor.datatype == "FP64":
        return tensor.contents.fp64_contents
    return tensor.contents.fp32_contents


class InferenceService:
    """The `inference.GRPCInferenceService` calls csipos serves."""

    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        positioner: Positioner,
        ready: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.store = store
        self.positioner = positioner
        self.ready = ready

    def _authorize(self, context: aio.ServicerContext[Any, Any]) -> None:
        header = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode("latin-1")
        check_bearer(header, self.settings, "locate")

    async def _unary(
        self,
        name: str,
        context: aio.ServicerContext[Any, Any],
        work: Callable[[], Awaitable[T]],
        *,
        auth: bool = True,
    ) -> T:
        start = time.perf_counter()
        try:
            if auth:
                self._authorize(context)
            answer = await work()
        except ServiceError as exc:
            _observe(name, exc.status, start)
            await context.abort(_CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)
        except Exception:
            log.exception("unhandled error in gRPC %s", name)
            _observe(name, 500, start)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")
        _observe(name, 200, start)
        return answer

    async def server_live(
        self, request: pb.ServerLiveRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ServerLiveResponse:
        async def work() -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self._unary("ServerLive", context, work, auth=False)

    async def server_ready(
        self, request: pb.ServerReadyRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ServerReadyResponse:
        async def work() -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self.ready())

        return await self._unary("ServerReady", context, work, auth=False)

    async def server_metadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ServerMetadataResponse:
        async def work() -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(**dataplane.server_metadata())

        return await self._unary("ServerMetadata", context, work, auth=False)

    async def model_ready(
        self, request: pb.ModelReadyRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ModelReadyResponse:
        async def work() -> pb.ModelReadyResponse:
            try:
                model = dataplane.served(self.store, request.name, request.version)
            except SiteNotFound:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=model.loaded)

        return await self._unary("ModelReady", context, work)

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ModelMetadataResponse:
        async def work() -> pb.ModelMetadataResponse:
            meta = dataplane.model_metadata(
                dataplane.served(self.store, request.name, request.version)
            )
            meta.pop("parameters")  # not in the gRPC message
            return pb.ModelMetadataResponse(**meta)

        return await self._unary("ModelMetadata", context, work)

    async def model_infer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        return await self._unary("ModelInfer", context, lambda: self._infer(request))

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        site = request.model_name
        model = dataplane.served(self.store, site, request.model_version)
        if model.multi_bs:
            return await self._infer_per_bs(request, model)
        if len(request.inputs) != 1:
            raise InvalidInput(
                "expected exactly one input tensor named 'csi'",
                {"got": [t.name for t in request.inputs]},
            )
        tensor = request.inputs[0]
        raw: bytes | None = None
        if request.raw_input_contents:
            if len(request.raw_input_contents) != 1:
                raise InvalidInput(
                    "raw_input_contents must hold one entry per input",
                    {"got": len(request.raw_input_contents)},
                )
            raw = request.raw_input_contents[0]
        csi = dataplane.input_csi(
            tensor.name,
            tensor.datatype,
            list(tensor.shape),
            max_batch=self.settings.max_batch,
            raw=raw,
            values=None if raw is not None else _values(tensor),
        )
        names = dataplane.select_outputs([o.name for o in request.outputs], model)
        pred = await self.positioner.locate(site, csi)
        answer = pb.ModelInferResponse(model_name=site, model_version=pred.version, id=request.id)
        for name, arr in dataplane.output_arrays(pred, names):
            answer.outputs.add(name=name, datatype=dataplane.output_datatype(arr), shape=arr.shape)
            answer.raw_output_contents.append(arr.tobytes())
        return answer

    async def _infer_per_bs(
        self, request: pb.ModelInferRequest, model: ServedSite
    ) -> pb.ModelInferResponse:
        """A multi-BS site: one input per base station (`csi_<bs>`), fused outputs."""
        site = request.model_name
        raws = list(request.raw_input_contents)
        if not request.inputs or (raws and len(raws) != len(request.inputs)):
            raise InvalidInput(
                "expected one input tensor per base station (any non-empty subset of "
                f"{dataplane.input_names(model)}) and, if raw, one raw_input_contents entry each",
                {"inputs": [t.name for t in request.inputs], "raw_input_contents": len(raws)},
            )
        per_bs = {}
        for i, tensor in enumerate(request.inputs):
            bs = dataplane.input_bs(model, tensor.name)
            if bs in per_bs:
                raise InvalidInput(f"input {tensor.name!r} given twice")
            per_bs[bs] = dataplane.input_tensor(
                tensor.datatype,
                list(tensor.shape),
                max_batch=self.settings.max_batch,
                raw=raws[i] if raws else None,
                values=None if raws else _values(tensor),
            )
        names = dataplane.select_outputs([o.name for o in request.outputs], model)
        pred = await self.positioner.locate_bs(site, dataplane.same_batch(per_bs))
        answer = pb.ModelInferResponse(model_name=site, model_version=pred.version, id=request.id)
        for name, arr in dataplane.output_arrays(pred, names):
            answer.outputs.add(name=name, datatype=dataplane.output_datatype(arr), shape=arr.shape)
            answer.raw_output_contents.append(arr.tobytes())
        return answer

    async def _streamed(self, request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
        start = time.perf_counter()
        try:
            answer = await self._infer(request)
        except ServiceError as exc:
            _observe("ModelStreamInfer", exc.status, start)
            failed = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
            return pb.ModelStreamInferResponse(error_message=exc.message, infer_response=failed)
        except Exception:
            log.exception("unhandled error in gRPC ModelStreamInfer")
            _observe("ModelStreamInfer", 500, start)
            failed = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
            return pb.ModelStreamInferResponse(
                error_message="internal server error", infer_response=failed
            )
        _observe("ModelStreamInfer", 200, start)
        return pb.ModelStreamInferResponse(infer_response=answer)

    async def model_stream_infer(
        self,
        requests: AsyncIterator[pb.ModelInferRequest],
        context: aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests run concurrently (so the batcher can coalesce them); answers in order."""
        try:
            self._authorize(context)
        except ServiceError as exc:
            await context.abort(_CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)
        pending: asyncio.Queue[asyncio.Task[pb.ModelStreamInferResponse] | None] = asyncio.Queue(
            STREAM_IN_FLIGHT
        )

        async def read() -> None:
            try:
                async for request in requests:
                    await pending.put(asyncio.ensure_future(self._streamed(request)))
            finally:
                await pending.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (task := await pending.get()) is not None:
                yield await task
            await reader  # surfaces a broken request stream
        finally:
            reader.cancel()
            while not pending.empty():
                left = pending.get_nowait()
                if left is not None:
                    left.cancel()

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's method handlers (no generated servicer base: our own types)."""

        def unary(fn: Any, req: Any, resp: Any) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
            )

        methods = {
            "ServerLive": unary(self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": unary(self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ServerMetadata": unary(
                self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
            ),
            "ModelReady": unary(self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ModelMetadata": unary(
                self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse
            ),
            "ModelInfer": unary(self.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                self.model_stream_infer,
                request_deserializer=pb.ModelInferRequest.FromString,
                response_serializer=pb.ModelStreamInferResponse.SerializeToString,
            ),
        }
        return grpc.method_handlers_generic_handler(SERVICE, methods)


async def start(service: InferenceService, host: str, port: int) -> tuple[aio.Server, int]:
    """Bind and start the server on the running event loop: (server, the bound port)."""
    limit = service.settings.max_body_bytes
    server = aio.server(
        options=[
            # The same body limit as HTTP; a bigger message gets RESOURCE_EXHAUSTED.
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            # Several uvicorn workers bind the same port; the kernel spreads connections.
            ("grpc.so_reuseport", 1),
        ]
    )
    server.add_generic_rpc_handlers((service.handler(),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind the gRPC port {address}")
    await server.start()
    log.info("gRPC (KServe V2) listening on %s:%d", host, bound)
    return server, bound
