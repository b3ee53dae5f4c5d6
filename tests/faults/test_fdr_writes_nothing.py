"""``debug=fdr`` promises nothing that lasts: no checkpoint (a later ``resume=auto`` in the
same dir would pick it up), no sample grid, no logger files."""

from __future__ import annotations

from tests.conftest import compose_train
from tests.faults.conftest import TINY


def test_fast_dev_run_leaves_no_files(tmp_path):
    from difflab.train import main

    # TINY switches the end-of-fit grid off; debug=fdr must do that itself
    tiny = [o for o in TINY if not o.startswith("callbacks.sample_grid.")]
    main(compose_train([*tiny, "debug=fdr"], output_dir=str(tmp_path)))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == []
