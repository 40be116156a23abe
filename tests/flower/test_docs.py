"""Every mod stack docs/flower.md shows runs on the installed flwr (its Message API)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from flwr.app import ArrayRecord  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM  # noqa: E402

from tests.flower import apps  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "docs" / "flower.md"
BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
          if "ClientApp(mods=" in b]


def stacks_of(block: str) -> list[ClientApp]:
    """The ClientApps a doc block builds, run as the reader would: with their own model (``Net``,
    here a tiny BN CNN) and data (``images``, ``labels``, ``guard_data``) in scope."""
    made: list[ClientApp] = []

    class Recording(ClientApp):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    images, labels = apps.client_data(0)
    scope = {"ClientApp": Recording, "Net": apps.make_bn_model, "images": images,
             "labels": labels, "guard_data": lambda msg, ctx: (images, labels)}
    exec(compile(block, str(DOC), "exec"), scope)  # noqa: S102 - the project's own doc
    return made


def test_the_doc_shows_the_mod_stacks_this_test_runs():
    names = [re.findall(r"(\w+)\(", b) for b in BLOCKS]
    assert len(BLOCKS) >= 4 and sum(len(stacks_of(b)) for b in BLOCKS) >= 6, names
    assert any("fixedclipping_mod" in b for b in BLOCKS) and any("LocalDpMod" in b for b in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_every_mod_stack_in_the_doc_runs_on_a_train_message(block):
    arrays = ArrayRecord(apps.make_bn_model().state_dict())
    for app in stacks_of(block):
        app.train()(apps.bn_train)
        msg = apps.train_message(arrays, node_id=3, server_round=1)
        # What DifferentialPrivacyClientSideFixedClipping adds to the train config.
        msg.content["config"][KEY_CLIPPING_NORM] = 1.0
        reply = app(msg, apps.context(3, 0))
        if reply.has_error():  # only the guard may answer with an error: a withheld update
            assert reply.error.reason.startswith("gradleak leakage guard withheld"), reply.error
        else:
            assert list(reply.content["arrays"].keys()) == list(arrays.keys())
            assert reply.content["metrics"]["num-examples"] == 1
