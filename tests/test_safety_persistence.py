"""Saving never deletes a user's files: models, indexes and retrievers replace only qrag's own output,
atomically, keep the old copy when the disk is full, and clean up after a killed save."""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from qrag_core import QRAGConfig, atomic, index, model_files
from qrag_core.errors import InvalidInputError, QRAGError, StorageError, UnsafeOutputError
from qrag_core.index import DocumentIndex
from qrag_core.model import QRAG
from qrag_core.retriever import Retriever
from tests.conftest import REPO, age, killed_writer, make_tiny_model


@pytest.fixture()
def loadable(minilm_tokenizer) -> QRAG:
    """A tiny model that reloads on its own (its action encoder is saved with it)."""
    return make_tiny_model(minilm_tokenizer, QRAGConfig(freeze_action_encoder=False))


def user_directory(path: Path) -> Path:
    """A directory of a user's own files."""
    (path / "notes").mkdir(parents=True)
    (path / "thesis.tex").write_text("three years of work")
    (path / "notes" / "todo.txt").write_text("back up the thesis")
    return path


def assert_untouched(path: Path) -> None:
    assert (path / "thesis.tex").read_text() == "three years of work"
    assert (path / "notes" / "todo.txt").read_text() == "back up the thesis"


def no_temporary_left(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(".tmp-")]


def weights(m: QRAG) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_save_pretrained_never_replaces_a_users_directory(tiny_model, tmp_path):
    target = user_directory(tmp_path / "mine")
    for overwrite in (True, False):
        with pytest.raises(UnsafeOutputError, match=rf"{target} is not empty and is not a qrag model.*thesis.tex"):
            tiny_model.save_pretrained(target, overwrite=overwrite)
        assert_untouched(target)
    assert no_temporary_left(tmp_path)
    # qrag's own model with a user's file added is not qrag's alone any more
    tiny_model.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "thesis.tex").write_text("three years of work")
    with pytest.raises(UnsafeOutputError, match="thesis.tex, which qrag did not write"):
        tiny_model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "thesis.tex").is_file()
    # a config.json that is not a qrag model's
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UnsafeOutputError, match="no valid config.json"):
        tiny_model.save_pretrained(tmp_path / "other")


def test_save_pretrained_refuses_the_working_and_home_directories_and_their_parents(tiny_model, tmp_path, monkeypatch):
    work = user_directory(tmp_path / "home" / "project")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for target in (".", work, work.parent, tmp_path, "~"):  # never "/" here: a regression would wipe the machine
        with pytest.raises(UnsafeOutputError, match="refusing to replace .*current directory|home directory"):
            tiny_model.save_pretrained(target)
    assert_untouched(work)
    with pytest.raises(UnsafeOutputError, match="refusing to replace /: it holds the current directory"):
        atomic.check_replaceable("/", model_files.MODEL_LAYOUT)  # checked without saving anything
    index = DocumentIndex.build(tiny_model, "Mary went to the garden. John took the milk.")
    with pytest.raises(UnsafeOutputError, match="refusing to replace"):
        index.save(".")
    assert_untouched(work)


def test_saving_again_replaces_qrag_s_own_model_and_overwrite_false_refuses(minilm_tokenizer, loadable, tmp_path):
    target = tmp_path / "model"
    loadable.save_pretrained(target)
    other = make_tiny_model(minilm_tokenizer, QRAGConfig(freeze_action_encoder=False), seed=5)
    with pytest.raises(UnsafeOutputError, match="already holds a qrag model; pass overwrite=True"):
        other.save_pretrained(target, overwrite=False)
    assert all(torch.equal(QRAG.from_pretrained(str(target)).state_dict()[k], v) for k, v in weights(loadable).items())
    other.save_pretrained(target)  # the default, as in transformers: a model saved again replaces the old one
    reloaded = QRAG.from_pretrained(str(target))
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in weights(other).items())
    assert no_temporary_left(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_index_save_never_deletes_a_users_files_and_replaces_its_own(tiny_model, tmp_path):
    built = DocumentIndex.build(tiny_model, "Mary went to the garden. John took the milk.")
    target = user_directory(tmp_path / "idx")
    with pytest.raises(UnsafeOutputError, match=rf"{target} is not empty and is not a qrag index"):
        built.save(target)
    assert_untouched(target)
    built.save(tmp_path / "own")
    bigger = DocumentIndex.build(tiny_model, ["Mary went to the garden.", "Sandra left. Bill slept."])
    with pytest.raises(UnsafeOutputError, match="already holds a qrag index"):
        bigger.save(tmp_path / "own", overwrite=False)
    bigger.save(tmp_path / "own")
    assert DocumentIndex.load(tmp_path / "own").doc_ids == bigger.doc_ids
    assert no_temporary_left(tmp_path)


def test_retriever_save_never_writes_into_a_users_directory(loadable, tmp_path):
    session = Retriever(loadable)
    session.add_texts(["Mary went to the garden. John took the milk."], ids=["story"])
    target = user_directory(tmp_path / "store")
    with pytest.raises(UnsafeOutputError, match="is not a qrag retriever"):
        session.save(target)
    assert sorted(p.name for p in target.iterdir()) == ["notes", "thesis.tex"]
    session.save(tmp_path / "own")
    session.add_texts(["Sandra left the office."], ids=["more"])
    session.save(tmp_path / "own")  # saving a retriever again replaces its own directory
    assert Retriever.load(tmp_path / "own").doc_ids == ["story", "more"]
    assert sorted(p.name for p in (tmp_path / "own").iterdir()) == ["index", "model", "qrag_retriever.json"]


@pytest.mark.parametrize("what", ["index", "model"])
def test_a_full_disk_keeps_the_old_copy_and_removes_the_temporary_one(tiny_model, tmp_path, monkeypatch, what):
    target = tmp_path / what
    old_index = DocumentIndex.build(tiny_model, "Mary went to the garden. John took the milk.")
    save = old_index.save if what == "index" else tiny_model.save_pretrained
    save(target)
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(index if what == "index" else model_files, "save_tensors", disk_full)
    with pytest.raises(StorageError, match=f"no space left on device at {target}"):
        save(target)
    assert {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert no_temporary_left(tmp_path)


def test_a_full_disk_in_the_transformers_weights_writer_keeps_the_old_model(loadable, tmp_path, monkeypatch):
    """An encoder's weights are written by transformers through safetensors, whose error on a full disk
    (as measured on a full tmpfs) is no OSError; the save still reports it and keeps the old copy."""
    import transformers.modeling_utils
    from safetensors import SafetensorError

    target = tmp_path / "model"
    loadable.save_pretrained(target)
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)  # what was written before the disk filled up
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    with pytest.raises(StorageError, match=f"no space left on device at {target}"):
        make_tiny_model(loadable.action_encoder.tokenizer, loadable.config, seed=5).save_pretrained(target)
    assert {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert no_temporary_left(tmp_path)


KILLED_FILE_WRITE = """
import os, sys
from qrag_core.atomic import atomic_file
with atomic_file(sys.argv[1]) as tmp:
    open(tmp, "wb").write(b"half the data")
    print(os.getpid(), flush=True)
    os._exit(9)
"""


def test_a_file_write_removes_what_a_killed_write_of_it_left(tmp_path):
    target = tmp_path / "metrics.jsonl"
    dead = killed_writer(KILLED_FILE_WRITE, str(target))
    host = socket.gethostname()
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(f".tmp-metrics.jsonl-{host}-{dead}-") and left.read_bytes() == b"half the data"
    live = tmp_path / f".tmp-metrics.jsonl-{host}-{os.getpid()}-abcd1234"  # a write running now
    elsewhere = tmp_path / f".tmp-metrics.jsonl-other-host-{dead}-abcd1234"  # its process cannot be checked
    other = tmp_path / f".tmp-other.jsonl-{host}-{dead}-abcd1234"  # another file's: left to that file's writes
    for kept in (live, elsewhere, other):
        kept.write_text("kept")
    atomic.write_file(target, "rows")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name, elsewhere.name, other.name])


def test_a_full_disk_in_a_single_file_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    atomic.write_file(target, "old")

    def disk_full(fd, mode):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fdopen", disk_full)
    with pytest.raises(StorageError, match=f"no space left on device at {target}"):
        atomic.write_file(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_leftovers_of_killed_saves_are_removed_or_restored(loadable, tmp_path):
    target = tmp_path / "model"
    loadable.save_pretrained(target)
    # an older qrag version's save (no host or process id in the name) killed before its renames two days ago,
    # and one whose files changed a minute ago (it may be saving now)
    orphan, recent = tmp_path / ".tmp-model-k1ll3d00", tmp_path / ".tmp-model-wr1t1ng0"
    for leftover in (orphan, recent):
        (leftover / "state_encoder").mkdir(parents=True)
        (leftover / "state_encoder" / "model.safetensors").write_bytes(b"\0" * 100_000)
    age(orphan, 2 * 24 * 3600)
    sibling = tmp_path / ".tmp-model-v2-abcd1234"  # another target's temporary directory is not touched
    sibling.mkdir()
    target.rename(tmp_path / ".tmp-model.old")  # killed between the two renames: only the old copy is left
    atomic.recover(target)
    assert QRAG.from_pretrained(str(target)) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-model-v2-abcd1234", recent.name, "model"]
    shutil.rmtree(recent)
    (tmp_path / ".tmp-model.old").mkdir()  # killed after them: the old copy is stale
    (tmp_path / ".tmp-model.old" / "config.json").write_text("{")
    loadable.save_pretrained(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-model-v2-abcd1234", "model"]


def test_a_save_keeps_the_temporary_directory_of_a_save_running_in_another_process(loadable, tmp_path):
    target = tmp_path / "model"
    loadable.save_pretrained(target)
    host = socket.gethostname()
    dead = killed_writer("import os; print(os.getpid(), flush=True); os._exit(9)")
    running = tmp_path / f".tmp-model-{host}-{os.getppid()}-abcd1234"  # a save under way in a live process
    killed = tmp_path / f".tmp-model-{host}-{dead}-abcd1234"
    for leftover in (running, killed):
        (leftover / "state_encoder").mkdir(parents=True)
    loadable.save_pretrained(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "model"]
    assert (running / "state_encoder").is_dir(), "the other save's files are untouched"


def killed_between_the_renames(target: Path) -> Path:
    """What a save killed between its two renames leaves: the old copy aside and the new one beside it (named as
    older qrag versions named it, a fresh random part each time); returns the new one."""
    new = target.with_name(f".tmp-{target.name}-{secrets.token_hex(4)}")
    shutil.copytree(target, new)
    target.rename(target.with_name(f".tmp-{target.name}.old"))
    return new


def test_loaders_restore_the_old_copy_after_a_save_killed_between_its_renames(loadable, tmp_path, caplog):
    session = Retriever(loadable)
    session.add_texts(["Mary went to the garden. John took the milk."], ids=["story"])
    session.save(tmp_path / "retriever")
    loadable.save_pretrained(tmp_path / "model")
    session.index.save(tmp_path / "index")
    loaders = {
        "model": lambda path: QRAG.from_pretrained(str(path)).config,
        "index": lambda path: DocumentIndex.load(path).doc_ids,
        "retriever": lambda path: Retriever.load(path).doc_ids,
    }
    copies = set()
    for name, load in loaders.items():
        target = tmp_path / name
        expected = load(target)
        new = killed_between_the_renames(target)
        copies.add(new.name)
        with caplog.at_level(logging.WARNING, logger="qrag_core.atomic"):
            assert load(target) == expected
        assert f"restoring {target} from {tmp_path / f'.tmp-{name}.old'}" in caplog.text
        # restored in place; the temporary copy is left for the next save (it may be a save still running)
        assert {p.name for p in tmp_path.iterdir() if p.name.startswith(f".tmp-{name}")} == {new.name}
        atomic.recover(target)  # what the next save does first: the same copy is kept
        assert load(target) == expected
    # the new copies are named as older qrag versions named them (no process to check): kept until idle for a day
    left = {p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")}
    assert left == copies


def test_a_killed_save_in_a_read_only_directory_is_read_where_it_lies(tiny_model, tmp_path, monkeypatch):
    built = DocumentIndex.build(tiny_model, "Mary went to the garden. John took the milk.")
    built.save(tmp_path / "index")
    killed_between_the_renames(tmp_path / "index")

    def read_only(source, destination):
        raise PermissionError(errno.EACCES, "Permission denied", str(source))

    monkeypatch.setattr(atomic.os, "replace", read_only)
    assert DocumentIndex.load(tmp_path / "index").doc_ids == built.doc_ids
    assert not (tmp_path / "index").exists()


IN_A_CHILD = """
import os, sys
from pathlib import Path
from qrag_core import atomic
THING = atomic.Layout("thing", ("thing.json",), ("thing.json",))
target = sys.argv[1]
"""

PAUSED_SAVE = (
    IN_A_CHILD
    + """
rename = os.replace

def pausing(source, destination):
    rename(source, destination)
    if Path(destination).name == ".tmp-thing.old":  # the old copy is aside, the new one not in place yet
        print("between", flush=True)
        sys.stdin.readline()

os.replace = pausing
with atomic.atomic_directory(target, THING) as tmp:
    (tmp / "thing.json").write_text("new")
"""
)

DURING_THE_RENAMES = {  # what another process does, once told to (a save starts with atomic.recover)
    "load": "print(open(os.path.join(atomic.readable(target), 'thing.json')).read())",
    "save": "with atomic.atomic_directory(target, THING) as tmp: (tmp / 'thing.json').write_text('second')",
}


def waits_for_a_lock(pid: int) -> bool:
    """Whether process ``pid`` is blocked waiting for a file lock (Linux lists waiters with ``->``)."""
    return any(line.split()[1] == "->" and line.split()[5] == str(pid) for line in open("/proc/locks"))


@pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs /proc/locks to see a process wait")
@pytest.mark.parametrize("during", DURING_THE_RENAMES)
def test_a_load_or_save_during_the_renames_of_a_save_in_another_process_waits_for_it(tmp_path, during):
    """Another process that loads or saves the same target while a save is between its two renames (the
    target missing, the old copy aside) waits for that save instead of restoring the old copy under it."""
    target = tmp_path / "thing"
    with atomic.atomic_directory(target, atomic.Layout("thing", ("thing.json",), ("thing.json",))) as tmp:
        (tmp / "thing.json").write_text("old")
    children = {
        name: subprocess.Popen(
            [sys.executable, "-c", IN_A_CHILD + code, str(target)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            text=True,
        )
        for name, code in [("saving", PAUSED_SAVE), ("other", "sys.stdin.readline()\n" + DURING_THE_RENAMES[during])]
    }
    saving, other = children["saving"], children["other"]
    assert saving.stdout.readline() == "between\n", saving.communicate()
    assert not target.exists() and (tmp_path / ".tmp-thing.old").is_dir()
    other.stdin.write("go\n")
    other.stdin.flush()
    deadline = time.monotonic() + 120
    while other.poll() is None and not waits_for_a_lock(other.pid):  # done already, or waiting for the save
        assert time.monotonic() < deadline, "the other process neither finished nor waited"
        time.sleep(0.01)
    results = {
        name: child.communicate("go on\n" if child is saving else None, timeout=120) for name, child in children.items()
    }
    assert saving.returncode == 0, results["saving"][1]
    assert other.returncode == 0, results["other"][1]
    assert (target / "thing.json").read_text() == ("second" if during == "save" else "new")
    if during == "load":
        assert results["other"][0] == "new\n", "it read the copy the save moved in"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]


def test_a_save_that_writes_what_its_layout_does_not_list_changes_nothing(tmp_path):
    layout = atomic.Layout("thing", ("thing.json",), ("thing.json",))
    with atomic.atomic_directory(tmp_path / "thing", layout) as tmp:
        (tmp / "thing.json").write_text("1")
    with pytest.raises(QRAGError, match="qrag bug"), atomic.atomic_directory(tmp_path / "thing", layout) as tmp:
        (tmp / "thing.json").write_text("2")
        (tmp / "surprise.bin").write_text("?")
    assert (tmp_path / "thing" / "thing.json").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]


def test_a_retriever_saved_with_extra_files_is_replaced_as_a_whole(loadable, tmp_path):
    session = Retriever(loadable)
    session.add_texts(["Mary went to the garden. John took the milk."], ids=["story"])
    own = tmp_path / "own"
    session.save(own, extra_files={"adapter_records.jsonl": "first\n"})
    session.save(own, extra_files={"adapter_records.jsonl": "second\n"})  # listed in its session file: qrag's
    assert (own / "adapter_records.jsonl").read_text() == "second\n"
    session.save(own)
    assert not (own / "adapter_records.jsonl").exists()
    for name in ("index", "../escape.txt", ".hidden"):
        with pytest.raises(InvalidInputError, match="extra files need plain names"):
            session.save(tmp_path / "bad", extra_files={name: ""})
    assert not (tmp_path / "bad").exists()


def test_a_llamaindex_retriever_persists_twice_to_the_same_directory(loadable, tmp_path):
    pytest.importorskip("llama_index.core")
    from llama_index.core import Document

    from qrag_integrations.llamaindex import QRAGRetriever

    retriever = QRAGRetriever.from_defaults(documents=[Document(text="Mary went home.", doc_id="a")], model=loadable)
    retriever.persist(tmp_path / "store")
    retriever.insert_documents([Document(text="John took the milk.", doc_id="b")])
    retriever.persist(tmp_path / "store")
    assert QRAGRetriever.from_persist_dir(tmp_path / "store").session.doc_ids == ["a", "b"]


def test_the_adapters_reopen_a_store_whose_save_was_killed_between_its_renames(loadable, tmp_path):
    pytest.importorskip("llama_index.core")
    pytest.importorskip("langchain_core")
    from llama_index.core import Document

    from qrag_integrations import langchain, llamaindex

    retriever = llamaindex.QRAGRetriever.from_defaults(
        documents=[Document(text="Mary went.", doc_id="a")], model=loadable
    )
    retriever.persist(tmp_path / "store")
    killed_between_the_renames(tmp_path / "store")
    reopened = llamaindex.QRAGRetriever.from_persist_dir(tmp_path / "store")
    assert reopened.session.doc_ids == ["a"]
    reopened.persist(tmp_path / "store")
    killed_between_the_renames(tmp_path / "store")
    assert langchain.QRAGRetriever.load(tmp_path / "store").session.doc_ids == ["a"]
