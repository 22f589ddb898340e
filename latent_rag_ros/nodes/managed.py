"""Managed (lifecycle) node base of detector, protector, egress and store: nothing goes out before ``activate``.

The ROS 2 node life cycle (``ros2 lifecycle set <node> configure|activate|deactivate|cleanup|shutdown``):

- constructor (unconfigured): parameters and /diagnostics only; no model, no store, no data topic;
- ``on_configure`` -> inactive: models or the store are loaded, lifecycle publishers created (they
  drop whatever is published while inactive); a failure returns FAILURE with one line, the node
  stays unconfigured and can be configured again;
- ``on_activate`` -> active: subscriptions, services, timers and the worker thread start;
- ``on_deactivate`` -> inactive: publishers off, inputs and services removed, the worker joined;
- ``on_cleanup`` -> unconfigured: models/store released; ``on_shutdown``: all of it.

With the ``autostart`` parameter (default true; ``autostart:=false`` in the launch files,
``latent-rag run --no-autostart``) the node configures and activates itself before it spins, and a
failed configure ends the process with one ``fatal`` line and exit code 1 (runner.spin_node), as
before lifecycle nodes existed. With autostart off a lifecycle manager drives the transitions.
/diagnostics (robot-internal on robot nodes; carries counters only) is published in every state and
shows it under ``lifecycle_state``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from latent_rag_ros.nodes.common import LatestSlot, NodeStatus, declare_config

SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE


class ManagedNode(LifecycleNode):
    """A lifecycle node: subclasses fill ``configure``/``activate``/``deactivate``/``release``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        # first: destroy_node must work on a node whose constructor failed (e.g. a wrongly typed parameter)
        self.active = False
        self.slot: LatestSlot | None = None
        self._workers: list[threading.Thread] = []
        self._released = True
        self.autostart = bool(self.declare_parameter(
            "autostart", True, ParameterDescriptor(
                description="configure and activate at start-up (false: wait for a lifecycle manager / "
                            "`ros2 lifecycle set`)", read_only=True)).value)
        self.cfg = declare_config(self)
        self.status = NodeStatus(self, self.cfg.ros.status_period_s, state=self.lifecycle_state)
        self.status.set(DiagnosticStatus.OK, "unconfigured: waiting for configure")
        self.configure_error = ""

    # ------------------------------------------------------------------ what subclasses provide
    def configure(self) -> None:
        """Load models/store, create lifecycle publishers and clients; raise with a one-line reason on failure."""

    def activate(self) -> None:
        """Create subscriptions, services and timers; start the worker."""

    def deactivate(self) -> None:
        """Remove subscriptions, services and timers; stop the worker (:meth:`stop_worker`)."""

    def release(self) -> None:
        """Free what ``configure`` made (idempotent: also runs after a failed configure)."""

    # ------------------------------------------------------------------ state machine
    def lifecycle_state(self) -> str:
        """Current lifecycle state label (unconfigured, inactive, active, finalized, or a transition)."""
        return str(self._state_machine.current_state[1])

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.status.set(DiagnosticStatus.OK, "configuring")
        self._released = False
        try:
            self.configure()
        except Exception as exc:  # noqa: BLE001 - a failed configure is one line, never a half-loaded node
            self.configure_error = str(exc) or type(exc).__name__
            self._release_quietly()
            self.status.set(DiagnosticStatus.ERROR, f"configure failed: {self.configure_error}")
            if not self.autostart:   # with autostart, spin_node prints it as the one fatal line
                self.get_logger().error(f"configure failed: {self.configure_error}")
            return FAILURE
        self.configure_error = ""
        self.status.set(DiagnosticStatus.OK, "inactive: configured, waiting for activate")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        ret = super().on_activate(state)   # lifecycle publishers on
        if ret != SUCCESS:
            return ret
        self.active = True
        try:
            self.activate()
        except Exception as exc:  # noqa: BLE001 - back to inactive with the reason, nothing half-started
            self.configure_error = f"activate failed: {exc}"
            self._stop_output()
            self.status.set(DiagnosticStatus.ERROR, self.configure_error)
            if not self.autostart:
                self.get_logger().error(self.configure_error)
            return FAILURE
        return SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_output()
        self.status.set(DiagnosticStatus.OK, "inactive: deactivated, nothing is published")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_quietly()
        self.status.set(DiagnosticStatus.OK, "unconfigured: cleaned up")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_output()
        self._release_quietly()
        self.status.set(DiagnosticStatus.OK, "finalized")
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_output()
        self._release_quietly()
        self.status.set(DiagnosticStatus.ERROR, "error in a transition: back to unconfigured")
        return SUCCESS

    def start_up(self) -> str:
        """configure + activate (what ``autostart`` does); "" on success, else the one-line reason."""
        if self.trigger_configure() != SUCCESS:
            return self.configure_error or "configure failed"
        if self.trigger_activate() != SUCCESS:
            return self.configure_error or "activate failed"
        return ""

    # ------------------------------------------------------------------ helpers
    def start_worker(self, target: Callable[[LatestSlot], None], name: str, depth: int, count: int = 1) -> None:
        """A fresh latest-wins slot and ``count`` worker threads that drain it (each runs ``target(slot)``)."""
        self.slot = LatestSlot(depth, max_age_s=self.cfg.ros.max_frame_age_s)
        self._workers = [threading.Thread(target=target, args=(self.slot,), name=f"{name}{i or ''}", daemon=True)
                         for i in range(max(1, count))]
        for t in self._workers:
            t.start()

    def stop_worker(self, timeout: float) -> None:
        """Close the slot and join the workers (before publishers go away: publishing on a destroyed node aborts)."""
        if self.slot is not None:
            self.slot.close()
        for t in self._workers:
            t.join(timeout=timeout)
        self._workers = []

    def send(self, pub: Any, msg: Any, unheard: str) -> None:
        """Publish ``msg``; if no subscriber is matched at that moment it is lost, and counted under ``unheard``.

        This is how frames lost while the next node restarts (or is inactive) are counted (issue 13):
        the detector counts crop messages nobody took (protector down), the protector counts
        protected crops nobody took (egress down). A lower bound: after a crash DDS lists the dead
        subscriber until its participant lease ends (~20 s with Fast DDS defaults, measured), and what
        is sent in that window is not noticed; a clean stop or a deactivate is noticed at once.
        """
        if pub.get_subscription_count() == 0:
            self.status.count(unheard)
        pub.publish(msg)

    def _stop_output(self) -> None:
        if self.active:
            self.active = False
            super().on_deactivate(LifecycleState("active", 3))   # lifecycle publishers off at once
            self.deactivate()

    def _release_quietly(self) -> None:
        if not self._released:
            self._released = True
            self.release()

    def destroy_node(self) -> None:
        # SIGINT/SIGTERM: the context is already shut down, so no transition can be published; stop
        # the output and free resources directly (what on_shutdown does)
        self._stop_output()
        self._release_quietly()
        super().destroy_node()
