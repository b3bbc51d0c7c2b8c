"""What the in-process backends (agents/backends/vllm.py, agents/backends/transformers.py) share:
their SDK, imported only when a backend is built, and the model they load once per process.

The SDKs (vLLM, torch, transformers) are heavy and optional: a worker that runs neither backend
must import without them. So `Sdk.load` imports a module by name at the point of use (the one
import in this project that sits inside a function, on purpose), and when it is missing the
error names the pip extra that brings it; `Sdk.require` checks at worker start, without
importing anything, so a missing SDK fails the start and not the first batch.

`SharedModelClient` is the model handling of a generator and a judge: the model is injected
(tests), or acquired from the backend's `SharedModels` by `_load` (the generator's and judge's
`load`) at the worker's start, or on first use when nothing loaded it, in a worker thread so
that loading weights (minutes) does not stall the event loop; it is released on close.

A generator follows its model's checkpoints (`switch`, called by the generation stage). In
place, where the backend can (`_claim` and `_reload`: vLLM's weight reload, transformers'
state dict) and the model is this client's alone: no new batch starts, the batches in flight
finish on the old weights, the new ones are loaded into the same model, and the next batch takes
them; one copy of the weights at any time. A reload that fails loads the old checkpoint back
(and, should that fail too, drops the model: the next batch loads the old checkpoint afresh).
Otherwise beside (a model shared with the judge, which must not change under it): the new
checkpoint is acquired beside the old one, new batches take it, and the old one is released
once the last batch that holds it (`_using`) has finished; for a moment the process holds both.
Either way a batch ends on the weights it started with, and its responses say so
(`model_version`).
"""

from __future__ import annotations

import abc
import asyncio
import importlib
import importlib.util
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from karma.agents.backends.base import BackendError, ModelLoadError, named

__all__ = ["Sdk", "SharedModelClient", "named"]  # named: the backends' one-phrase exceptions

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # annotations only: config reads the backends' names, not the reverse
    from karma.streams.config import BackendSpec


@dataclass(frozen=True)
class Sdk:
    """A backend's optional SDK: the modules it needs and the pip extra that installs them."""

    backend: str  # as the configuration names it
    modules: tuple[str, ...]
    extra: str  # of karma-stream
    # What the error says the backend needs; None: the modules, by name.
    needs: str | None = None

    @property
    def install_hint(self) -> str:
        return f"pip install 'karma-stream[{self.extra}]'"

    def require(self) -> None:
        """Fails at worker start, not at the first batch, when a module is missing (cheap: no import)."""
        missing = [name for name in self.modules if not _findable(name)]
        if missing:
            raise BackendError(self._needs(missing))

    def load(self, name: str) -> Any:
        """The module `name` (one of the SDK's, or one inside it), imported now."""
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            raise BackendError(f"{self._needs(self.modules)} ({type(exc).__name__}: {exc})") from exc

    def _needs(self, modules: Sequence[str]) -> str:
        return f"the {self.backend} backend needs {self.needs or ' and '.join(modules)}: {self.install_hint}"


def _findable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: a module entry without a spec
        return False


class SharedModelClient(abc.ABC):
    """The model handling shared by a backend's generator and judge (see the module docstring)."""

    backend: str

    def __init__(self, spec: BackendSpec, served_model: str, model: Any) -> None:
        self.spec = spec
        self.served_model = served_model
        self._model = model  # injected (tests), or acquired on first use
        self._owns_model = model is None
        self._starting = asyncio.Lock()  # one load, however many batches wait for it
        self.version = 1  # the checkpoint version served: 1 is the configured one (karma.checkpoints)
        self._batches: Counter[int] = Counter()  # version -> batches running on it now
        self._batch_done = asyncio.Condition()

    @abc.abstractmethod
    def _acquire(self, served_model: str, engine_args: dict[str, Any]) -> Any:
        """The process's shared model (blocking: it may load weights)."""

    @abc.abstractmethod
    async def _release(self, model: Any) -> None:
        """Gives the model back; the last user frees it."""

    @abc.abstractmethod
    def _cannot_load(self, exc: Exception) -> str:
        """Why the model is not there, for every request that needed it."""

    async def _prepared(self, model: Any) -> Any:
        """What the requests use; the model itself unless a backend needs more from it."""
        return model

    async def _load(self, name: str) -> None:
        """Loads the model now, in a thread (the event loop keeps running), before the worker
        consumes; a model that cannot load raises ModelLoadError naming `name`, the checkpoint
        and the cause, which stops the worker (streams/worker.py)."""
        async with self._starting:
            if self._model is not None:
                return
            try:
                self._model = await asyncio.to_thread(
                    self._acquire, self.served_model, dict(self.spec.engine_args)
                )
            except BackendError as exc:  # a missing SDK: its reason names the pip extra
                raise ModelLoadError(name, self.served_model, exc.reason) from exc
            except Exception as exc:  # MemoryError is an Exception too: out of memory stops the start
                raise ModelLoadError(name, self.served_model, exc) from exc

    async def _ready(self, who: str) -> Any:
        """What the requests use, or a BackendError prefixed with `who` when it cannot be had."""
        try:
            async with self._starting:
                if self._model is None:
                    self._model = await asyncio.to_thread(
                        self._acquire, self.served_model, dict(self.spec.engine_args)
                    )
            return await self._prepared(self._model)
        except BackendError as exc:
            return BackendError(f"{who}: {exc.reason}", exc.kind)
        except Exception as exc:
            return BackendError(f"{who}: {self._cannot_load(exc)}")

    @asynccontextmanager
    async def _using(self, who: str) -> AsyncIterator[tuple[Any, int]]:
        """What one batch's requests use (or a BackendError, as `_ready`), and the version it is,
        held for the batch: a `switch` releases the old model only when no batch holds it."""
        try:
            async with self._starting:
                if self._model is None:
                    self._model = await asyncio.to_thread(
                        self._acquire, self.served_model, dict(self.spec.engine_args)
                    )
                model, version = self._model, self.version
                self._batches[version] += 1
        except BackendError as exc:
            yield BackendError(f"{who}: {exc.reason}", exc.kind), self.version
            return
        except Exception as exc:
            yield BackendError(f"{who}: {self._cannot_load(exc)}"), self.version
            return
        try:
            try:
                ready: Any = await self._prepared(model)
            except BackendError as exc:
                ready = BackendError(f"{who}: {exc.reason}", exc.kind)
            except Exception as exc:
                ready = BackendError(f"{who}: {self._cannot_load(exc)}")
            yield ready, version
        finally:
            async with self._batch_done:
                self._batches[version] -= 1
                self._batch_done.notify_all()

    def _claim(self, model: Any, path: str, engine_args: dict[str, Any]) -> bool:
        """Files the model, held by this client alone, under `path` so that it can be reloaded in
        place; False (the default, and when another client shares it): the new version is loaded
        beside instead."""
        return False

    async def _reload(self, model: Any, path: str) -> None:
        """Loads the checkpoint at `path` into `model` in place (the backends whose `_claim` can
        say yes)."""
        raise NotImplementedError

    async def switch(self, name: str, path: str, version: int) -> None:
        """Serves the checkpoint at `path` as `version` from the next batch on, in place or beside
        (module docstring). A checkpoint that does not load raises ModelLoadError and the old
        version serves on."""
        model, args = self._model, dict(self.spec.engine_args)
        if model is not None and self._owns_model and self._claim(model, path, args):
            await self._switch_in_place(name, model, path, version, args)
        else:
            await self._switch_beside(name, path, version)

    async def _switch_in_place(
        self, name: str, model: Any, path: str, version: int, args: dict[str, Any]
    ) -> None:
        async with self._starting:  # no batch starts on the model while its weights change
            async with self._batch_done:
                await self._batch_done.wait_for(lambda: self._batches[self.version] <= 0)
            old = self.served_model
            try:
                await self._reload(model, path)
            except Exception as exc:
                await self._restore(model, old, args)
                raise ModelLoadError(name, path, exc) from exc
            self.served_model, self.version = path, version

    async def _restore(self, model: Any, old: str, args: dict[str, Any]) -> None:
        """After a failed reload (holding `_starting`): the old weights back, or no model."""
        try:
            await self._reload(model, old)
        except Exception as exc:
            log.error(
                "%s: the old weights did not load back either (%s): the next batch loads %s afresh",
                self.served_model,
                named(exc),
                old,
            )
            self._model = None
            await self._release(model)
            return
        self._claim(model, old, args)

    async def _switch_beside(self, name: str, path: str, version: int) -> None:
        try:
            new = await asyncio.to_thread(self._acquire, path, dict(self.spec.engine_args))
        except BackendError as exc:
            raise ModelLoadError(name, path, exc.reason) from exc
        except Exception as exc:
            raise ModelLoadError(name, path, exc) from exc
        async with self._starting:
            old, old_version, owned = self._model, self.version, self._owns_model
            self._model, self.served_model, self.version = new, path, version
            self._owns_model = True
        if old is not None and owned:
            async with self._batch_done:
                await self._batch_done.wait_for(lambda: self._batches[old_version] <= 0)
            await self._release(old)

    async def close(self) -> None:
        if self._owns_model and self._model is not None:
            model, self._model = self._model, None
            await self._release(model)
