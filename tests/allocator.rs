//! `runtime::retain_freed_memory`: after it, a large array comes from the heap, not from a
//! fresh mapping of the operating system's (which the next step would fault in again), and
//! freeing it keeps the memory. Its own test binary: the setting is process-wide.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn large_arrays_come_from_the_heap_and_stay_after_they_are_freed() {
    // mallinfo2: `hblkhd` counts bytes in mmapped blocks, `arena` the heap's bytes.
    let info = || unsafe { libc::mallinfo2() };
    // By default glibc maps an array above its threshold (128 KiB at first) and, when that
    // is freed, raises the threshold to the array's size (here 1 MiB) and the heap's trim
    // threshold to twice that: a 16 MiB array would still be mapped afresh, and a heap top
    // of 16 MiB handed back.
    let before = info().hblkhd;
    let probe = ndarray::Array1::<f32>::zeros((1 << 20) / 4);
    assert!(
        info().hblkhd >= before + (1 << 20),
        "by default, glibc maps a large array"
    );
    drop(probe);
    let large = 16 << 20;

    assert!(tapegrad::runtime::retain_freed_memory());
    let (mapped, heap) = (info().hblkhd, info().arena);
    let array = std::hint::black_box(ndarray::Array1::<f32>::zeros(large / 4));
    assert_eq!(
        info().hblkhd,
        mapped,
        "no new mapping once memory is retained"
    );
    let heap_with_array = info().arena;
    // The heap grew by the array, less what it had free already.
    assert!(
        heap_with_array >= large.max(heap),
        "the array is on the heap: {heap} -> {heap_with_array} bytes"
    );
    drop(array);
    assert_eq!(
        info().arena,
        heap_with_array,
        "freeing it hands nothing back"
    );
}
