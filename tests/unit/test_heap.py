"""The environment the router command restarts itself with (router/heap.py)."""

from router.heap import huge_page_env


def test_python_objects_go_to_glibcs_heap_on_huge_pages() -> None:
    env = huge_page_env({"PATH": "/bin"})
    assert env == {"PATH": "/bin", "PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def test_other_glibc_tunables_are_kept_and_a_hugetlb_value_replaced() -> None:
    env = huge_page_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
