import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``): on a
    machine shared with other test workers, threads contend and run far slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """One tiny labelled image folder per test process (4 classes x 12 train / 4 val images, 32 px), shared by every
    test that only reads it; a test that changes its data builds its own (tests.helpers.tiny_dataset)."""
    from tests.helpers import tiny_dataset

    return tiny_dataset(str(tmp_path_factory.mktemp("tiny") / "demo"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run the tests marked slow (the fault matrix over every training script); "
                          "SSL_SLOW_TESTS=1 does the same")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a variant of a test that runs by default; selected with --runslow")


# the longest tests (minutes: 2-process runs killed and resumed, the bench command) start first, so that
# the two xdist workers end together instead of one waiting on a long test picked up last
FIRST = ("test_faults.py", "test_speed_options.py",
         "test_moco_train.py", "test_sce_train.py", "test_deepcluster_train.py", "test_swav_train.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(FIRST)))  # stable: file order kept
    if config.getoption("--runslow") or os.environ.get("SSL_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow variant: run with --runslow (or SSL_SLOW_TESTS=1)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
