"""protector_node: person crops in, protected crops out (the algorithm runs in core.Protector).

For each batch of crops: f = E(crop) on the robot, then one RetrieveLatents call per crop to the
trusted store (asynchronous, with a timeout), then fusion, T steps and rendering. If the store does
not answer, the status says so and NOTHING is published for those crops: never an unprotected image.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from sensor_msgs.msg import RegionOfInterest

from latent_rag_ros.core.batching import BatchWindow
from latent_rag_ros.core.imaging import tensor_to_bgr
from latent_rag_ros.core.protector import Protector, resolve_device
from latent_rag_ros.core.retrieval import Retrieved
from latent_rag_ros.egress_auth import EgressTagger, key_file, load_key
from latent_rag_ros.models.factory import build_models
from latent_rag_ros.msg import PersonCrop, PersonCrops, ProtectedCrop
from latent_rag_ros.nodes.common import (
    FrameLimits,
    InOrder,
    LatestSlot,
    bgr_to_image,
    f32_array,
    frame_limits,
    image_to_bgr,
    now_ms,
    qos_profile,
    service_qos,
)
from latent_rag_ros.nodes.egress_node import sign_protected
from latent_rag_ros.nodes.link import client_sealer, open_reply, to_request
from latent_rag_ros.nodes.managed import ManagedNode
from latent_rag_ros.security import ClientSealer
from latent_rag_ros.srv import RetrieveLatents

MAX_LABEL_CHARS = 256   # identity labels longer than this are refused (they travel off the robot)


def crop_to_bgr(crop: PersonCrop, limits: FrameLimits) -> np.ndarray:
    """A PersonCrop's image as BGR after checking it is consistent; ValueError says what is wrong."""
    box, img = crop.box, crop.image
    if (box.width, box.height) != (img.width, img.height):
        raise ValueError(f"box {box.width}x{box.height} does not match the crop image {img.width}x{img.height}")
    if box.x_offset + box.width > 1 << 31 or box.y_offset + box.height > 1 << 31:
        raise ValueError(f"box at ({box.x_offset}, {box.y_offset}) lies outside any frame")
    if len(crop.label) > MAX_LABEL_CHARS:
        raise ValueError(f"label of {len(crop.label)} characters, above {MAX_LABEL_CHARS}")
    return image_to_bgr(img, limits)


class _CropBatch:
    """Crops of one micro-batch, possibly from several frames (each crop keeps its own header)."""

    def __init__(self, crops: list) -> None:
        self.crops = crops


class ProtectorNode(ManagedNode):
    """Runs Latent-RAG protection on crop batches and publishes ProtectedCrop messages (a lifecycle node)."""

    def __init__(self) -> None:
        super().__init__("protector_node")
        self.protector: Protector | None = None
        self.tagger: EgressTagger | None = None
        self.client = self.pub = self.sub = None
        self._sealer: ClientSealer | None = None
        self.limits = frame_limits(self.cfg)
        self.window: BatchWindow | None = None
        self._window_lock = threading.Lock()   # the window is shared by the worker threads
        self._take_lock = threading.Lock()     # taking a frame and numbering it are one step
        self._order = InOrder()                # frames protected side by side are published in camera order

    def configure(self) -> None:
        """Load the egress key and the models (one warm-up); create the store client and the publisher."""
        self.tagger = EgressTagger(load_key(key_file()))   # egress forwards only what this node tagged
        device = resolve_device(self.cfg.protector.device)
        models = build_models(self.cfg, device, with_encoder=False)
        self.random_weights = models.random_weights
        self.sources = dict(models.sources)   # model fingerprints the store must have been built for
        self.protector = Protector(models.generator, models.reid, self.cfg.protector, device)
        self.model_name = getattr(models.reid, "name", self.cfg.models.reid)
        if self.protector.pool is not None:
            self.protector.pool.start()   # spawn and warm up every worker process before the first frame
        self._warm_up()
        if self.random_weights:
            self.get_logger().warning(f"RANDOM-WEIGHT models in use: {', '.join(self.random_weights)}")
        self.status.set(DiagnosticStatus.OK, "inactive: configured", model_loaded=True, device=str(device),
                        random_weights=",".join(self.random_weights) or "none", store_reachable="unknown",
                        workers=self.protector.workers)
        # the trusted store directly (local store over SHM) or through the host-local relay (remote store)
        service = self.cfg.link.relay_service if self.cfg.link.via_relay else self.cfg.ros.retrieve_service
        self.client = self.create_client(RetrieveLatents, service, qos_profile=service_qos(self.cfg.ros.service_depth))
        self._sealer = None
        self._link_sealer()
        self.pub = self.create_lifecycle_publisher(ProtectedCrop, self.cfg.ros.protected_topic,
                                                   qos_profile(self.cfg.ros.output_qos))
        self.device = device

    def activate(self) -> None:
        """Subscribe to crops and start the workers (one per protection process) and the batching window."""
        window_ms = self.cfg.protector.batch_window_ms   # 0: each frame is one batch, as it arrives
        self.window = BatchWindow(self.cfg.protector.batch_size, window_ms, now_ms) if window_ms > 0 else None
        self._order = InOrder()
        # one thread per worker process, so that frames are protected side by side (core/parallel.py)
        self.start_worker(self._run, "protector", self.cfg.ros.max_queue, self.protector.workers)
        self.sub = self.create_subscription(PersonCrops, self.cfg.ros.crops_topic, self.on_crops,
                                            qos_profile(self.cfg.ros.output_qos))
        self.status.set(DiagnosticStatus.OK, "waiting for crops")
        self.get_logger().info(f"protecting {self.cfg.ros.crops_topic} -> {self.cfg.ros.protected_topic} "
                               f"on {self.device}")

    def deactivate(self) -> None:
        """Unsubscribe and join the worker (a frame in progress is finished but not published)."""
        if self.sub is not None:
            self.destroy_subscription(self.sub)
            self.sub = None
        self.stop_worker(60.0)

    def release(self) -> None:
        """Free the models, the store client, the publisher and the keys."""
        if self.pub is not None:
            self.destroy_lifecycle_publisher(self.pub)
            self.pub = None
        if self.client is not None:
            self.destroy_client(self.client)
            self.client = None
        if self.protector is not None:
            self.protector.close()
        self.protector = None
        self.tagger = None
        self._sealer = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.status.set(self.status.level, self.status.message, model_loaded=False)

    def _warm_up(self) -> None:
        """One full protection of a grey crop with the generator's average code (loads kernels, caches)."""
        g = self.protector.generator
        h, w = self.protector.working_size
        img = torch.full((1, 3, h, w), 0.5)
        lat = g.w_avg.detach().float().cpu().numpy()[None, None, None].repeat(g.num_ws, axis=2)
        lat = np.repeat(lat, 2, axis=1)
        self.protector.protect(img, Retrieved(lat, np.zeros((1, 2), np.float32), np.zeros((1, 2), np.int64), "warmup"))

    def on_crops(self, msg: PersonCrops) -> None:
        """Queue the newest crop batch (older waiting batches beyond max_queue are dropped and counted)."""
        slot = self.slot
        if slot is None or slot.closed:
            return
        self.status.count("frames_in")
        self.status.count("crops_in", len(msg.crops))
        if not slot.put(msg):
            self.status.count("frames_dropped")

    def _run(self, slot: LatestSlot) -> None:
        order = self._order   # this activation's; a thread left over from an earlier one keeps its own
        while rclpy.ok() and not slot.closed:
            with self._window_lock:
                wait = self.window.wait_s(0.2) if self.window is not None else 0.2
            with self._take_lock:   # frames are numbered in the order they are taken
                msg = slot.get(wait)
                ticket = order.next() if msg is not None and self.window is None else -1
                if msg is not None and self.window is not None:
                    with self._window_lock:
                        self.window.add(msg.crops)
            stale = slot.take_stale()
            if stale:   # waited longer than ros.max_frame_age_s: dropped, counted
                self.status.count("frames_stale", stale)
            if self.window is None:
                if msg is not None:
                    self._process_safely(msg, order, ticket, slot)
                continue
            # micro-batching: crops of several frames share one batch; none waits past batch_window_ms
            while not slot.closed:
                with self._window_lock:
                    batch = self.window.take() if self.window.ready() else None
                    ticket = order.next() if batch is not None else -1
                if batch is None:
                    break
                self._process_safely(_CropBatch(batch), order, ticket, slot)

    def _process_safely(self, msg: PersonCrops | _CropBatch, order: InOrder, ticket: int, slot: LatestSlot) -> None:
        """Protect and publish in ticket order; a failure publishes nothing and lets the next ticket go."""
        try:
            self.process(msg, lambda: order.wait_turn(ticket, lambda: self.active and not slot.closed))
        except Exception as exc:  # noqa: BLE001 - keep the node alive; never publish unprotected
            self.status.count("errors")
            self.status.set(DiagnosticStatus.ERROR, f"protection failed: {exc}")
            self.get_logger().error(f"protection failed: {exc}")
        finally:
            order.done(ticket)

    def _link_sealer(self) -> ClientSealer | None:
        """This robot's link key (``link.key_id``), loaded once it exists (provisioning needs no restart)."""
        if self._sealer is None:
            try:
                self._sealer = client_sealer(self.cfg)
            except ValueError as exc:   # KeyFileError included: missing, unreadable or revoked
                self.status.set(DiagnosticStatus.ERROR, "no link key: nothing can be protected", link_key=False)
                self.get_logger().error(f"trusted store link: {exc}", throttle_duration_sec=10.0)
                return None
            self.status.set(self.status.level, self.status.message, link_key=True)
        return self._sealer

    def _retrieve(self, identity: np.ndarray) -> list[SimpleNamespace | None]:
        """One sealed, authenticated RetrieveLatents call per identity vector, all in flight; None where it failed."""
        sealer = self._link_sealer()
        if sealer is None or not self.client.wait_for_service(timeout_sec=self.cfg.ros.service_timeout_s):
            return [None] * len(identity)
        meta = {"m": int(self.cfg.protector.m), "exclude_id": -1, "exclude_label": "",
                "generator": self.sources.get("generator", ""), "reid": self.sources.get("reid", "")}
        pending = []
        for f in identity:
            env = sealer.seal("retrieve", meta, {"identity": np.asarray(f, np.float32)})
            ev = threading.Event()
            fut = self.client.call_async(to_request("retrieve", env))
            fut.add_done_callback(lambda _f, ev=ev: ev.set())
            pending.append((env, fut, ev))
        out: list[SimpleNamespace | None] = []
        deadline = now_ms() + self.cfg.ros.service_timeout_s * 1e3
        for env, fut, ev in pending:
            while not ev.is_set() and self.active and now_ms() < deadline:
                ev.wait(0.1)  # short waits: a shutdown (Ctrl-C) does not sit out the whole timeout
            if not ev.is_set():
                self.client.remove_pending_request(fut)
                out.append(None)
                continue
            res = fut.result()
            reply = open_reply(sealer, "retrieve", env, res) if res is not None else None
            if reply is None or not reply.ok:
                message = reply.message if reply is not None else "no reply"
                self.get_logger().warning(f"store refused: {message}", throttle_duration_sec=5.0)
                if "not authenticated" in message:
                    self._sealer = None   # re-read the key file next time: it may have been rotated
                out.append(None)
                continue
            lat = reply.arrays["latents"]
            out.append(SimpleNamespace(latents=np.ascontiguousarray(lat, np.float32), shape=list(lat.shape),
                                       scores=np.ascontiguousarray(reply.arrays["scores"], np.float32),
                                       ids=reply.arrays["ids"], store_version=str(reply.meta.get("store_version"))))
        return out

    def process(self, msg: PersonCrops | _CropBatch, turn: Callable[[], bool] = lambda: True) -> None:
        """Protect every valid crop of one frame (or of one micro-batch) and publish the results.

        ``turn`` blocks until the frames taken before this one are published (False: shutting down).
        """
        t0 = now_ms()
        crops, metas = [], []
        for c in msg.crops:
            try:
                crops.append(crop_to_bgr(c, self.limits))
                metas.append(c)
            except ValueError as exc:
                self.status.reject("crops_invalid", str(exc))
                self.get_logger().warning(f"bad crop skipped: {exc}", throttle_duration_sec=5.0)
        if not crops:
            return
        images = self.protector.prepare(crops)
        t_embed = now_ms()
        identity = self.protector.identity(crops)
        t_ret = now_ms()
        responses = self._retrieve(identity.cpu().numpy())
        t_done = now_ms()
        keep = [i for i, r in enumerate(responses) if r is not None]
        if len(keep) < len(responses):
            self.status.count("crops_dropped_store", len(responses) - len(keep))
        if not keep:
            if self.status.flags.get("store_reachable") != "False":
                self.status.count("store_outages")   # monotone: a short outage stays visible after it ends
            self.status.set(DiagnosticStatus.ERROR, "trusted store unreachable or refusing: nothing published",
                            store_reachable=False)
            return
        self.status.set(DiagnosticStatus.OK, "running", store_reachable=True)
        shapes = {tuple(responses[i].shape) for i in keep}
        if len(shapes) != 1:
            raise RuntimeError(f"store returned inconsistent latent shapes {shapes}")
        shape = shapes.pop()
        latents = np.stack([np.frombuffer(responses[i].latents, dtype=np.float32).reshape(shape) for i in keep])
        got = Retrieved(latents, np.stack([np.frombuffer(responses[i].scores, np.float32) for i in keep]),
                        np.stack([np.asarray(responses[i].ids, np.int64) for i in keep]),
                        responses[keep[0]].store_version)
        timings = {"prepare": t_embed - t0, "embed": t_ret - t_embed, "retrieve": t_done - t_ret}
        result = self.protector.protect(images[keep], got, identity[keep], timings)
        sizes = [crops[i].shape[:2] for i in keep]
        protected = tensor_to_bgr(result.images, sizes)
        names = list(result.timings_ms)
        if not self.active or not turn() or not self.active:   # turn(): the frames taken before go first
            return  # deactivated or shutting down: nothing leaves (the publishers may already be gone)
        for j, i in enumerate(keep):
            src = metas[i]
            out = ProtectedCrop()
            out.header = src.header
            out.image = bgr_to_image(protected[j], src.header, encoding="rgb8")
            out.embedding = f32_array(result.embeddings[j].detach().float().cpu().numpy())
            out.embedding_model = self.model_name
            out.box = RegionOfInterest(x_offset=src.box.x_offset, y_offset=src.box.y_offset,
                                       width=src.box.width, height=src.box.height)
            out.track_id = src.track_id
            out.label = src.label
            out.store_version = result.store_version
            out.m = int(latents.shape[1])
            out.steps = int(self.cfg.protector.steps)
            out.stage_names = names
            out.stage_ms = [float(result.timings_ms[k]) for k in names]
            sign_protected(self.tagger, out)
            self.send(self.pub, out, "crops_unheard")   # nobody subscribed (egress down): lost, counted
        self.status.count("crops_out", len(keep))
        for k, v in result.timings_ms.items():
            self.status.latency(k, v)
        self.status.latency("frame", now_ms() - t0)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run latent_rag_ros protector_node``."""
    from latent_rag_ros.nodes.runner import spin_node

    return spin_node(ProtectorNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
