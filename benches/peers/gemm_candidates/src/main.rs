//! GFLOP/s of each GEMM candidate at the workload's product shapes (f32), median of five
//! timings. `cargo run --release -- THREADS [CANDIDATES]`, CANDIDATES a comma-separated list of
//! matrixmultiply, gemm, faer, openblas (with `--features openblas`), mm-halves and
//! gemm-halves (the product's row halves on two rayon threads, as tapegrad splits it). Set
//! MATMUL_NUM_THREADS and OPENBLAS_NUM_THREADS to THREADS as well: those libraries read them.

use std::time::Instant;
use std::num::NonZeroUsize;

#[derive(Clone, Copy)]
struct Shape { m: usize, k: usize, n: usize, ta: bool, tb: bool, name: &'static str }

// Row-major A (m,k) or its transpose stored (k,m); B (k,n) or stored (n,k).
fn strides(t: bool, rows: usize, cols: usize) -> (isize, isize) {
    // returns (row stride, col stride) of the logical (rows, cols) matrix
    if t { (1, rows as isize) } else { (cols as isize, 1) }
}

fn mm(which: &str, s: Shape, a: &[f32], b: &[f32], c: &mut [f32], threads: usize) {
    let (ars, acs) = strides(s.ta, s.m, s.k);
    let (brs, bcs) = strides(s.tb, s.k, s.n);
    match which {
        "matrixmultiply" => unsafe {
            matrixmultiply::sgemm(s.m, s.k, s.n, 1.0, a.as_ptr(), ars, acs, b.as_ptr(), brs, bcs, 0.0, c.as_mut_ptr(), s.n as isize, 1)
        },
        "gemm" => unsafe {
            let par = if threads == 1 { gemm::Parallelism::None } else { gemm::Parallelism::Rayon(threads) };
            gemm::gemm(s.m, s.n, s.k, c.as_mut_ptr(), 1, s.n as isize, false, a.as_ptr(), acs, ars, b.as_ptr(), bcs, brs, 0.0f32, 1.0f32, false, false, false, par)
        },
        "faer" => unsafe {
            let par = if threads == 1 { faer::Par::Seq } else { faer::Par::Rayon(NonZeroUsize::new(threads).unwrap()) };
            let am = faer::MatRef::from_raw_parts(a.as_ptr(), s.m, s.k, ars, acs);
            let bm = faer::MatRef::from_raw_parts(b.as_ptr(), s.k, s.n, brs, bcs);
            let cm = faer::MatMut::from_raw_parts_mut(c.as_mut_ptr(), s.m, s.n, s.n as isize, 1);
            faer::linalg::matmul::matmul(cm, faer::Accum::Replace, am, bm, 1.0f32, par);
        },
        "openblas" => openblas(s, a, b, c),
        "mm-halves" | "gemm-halves" => {
            let inner = if which == "mm-halves" { "matrixmultiply" } else { "gemm" };
            let h = s.m / 2;
            let (ars_, acs_) = strides(s.ta, s.m, s.k);
            let (c0, c1) = c.split_at_mut(h * s.n);
            let s0 = Shape { m: h, ..s };
            let s1 = Shape { m: s.m - h, ..s };
            // second half of A rows: offset h*ars
            let a1 = &a[(h as isize * ars_) as usize..];
            let _ = acs_;
            rayon::join(|| mm_strided(inner, s0, a, ars_, acs_, b, c0), || mm_strided(inner, s1, a1, ars_, acs_, b, c1));
        }
        _ => unreachable!(),
    }
}

fn mm_strided(which: &str, s: Shape, a: &[f32], ars: isize, acs: isize, b: &[f32], c: &mut [f32]) {
    let (brs, bcs) = strides(s.tb, s.k, s.n);
    unsafe { match which {
        "matrixmultiply" => matrixmultiply::sgemm(s.m, s.k, s.n, 1.0, a.as_ptr(), ars, acs, b.as_ptr(), brs, bcs, 0.0, c.as_mut_ptr(), s.n as isize, 1),
        _ => gemm::gemm(s.m, s.n, s.k, c.as_mut_ptr(), 1, s.n as isize, false, a.as_ptr(), acs, ars, b.as_ptr(), bcs, brs, 0.0f32, 1.0f32, false, false, false, gemm::Parallelism::None),
    } }
}

#[cfg(feature = "openblas")]
fn openblas(s: Shape, a: &[f32], b: &[f32], c: &mut [f32]) {
    unsafe extern "C" { fn cblas_sgemm(order: i32, ta: i32, tb: i32, m: i32, n: i32, k: i32, alpha: f32, a: *const f32, lda: i32, b: *const f32, ldb: i32, beta: f32, c: *mut f32, ldc: i32); }
    let (ta, lda) = if s.ta { (112, s.m) } else { (111, s.k) };
    let (tb, ldb) = if s.tb { (112, s.k) } else { (111, s.n) };
    unsafe { cblas_sgemm(101, ta, tb, s.m as i32, s.n as i32, s.k as i32, 1.0, a.as_ptr(), lda as i32, b.as_ptr(), ldb as i32, 0.0, c.as_mut_ptr(), s.n as i32) }
}
#[cfg(not(feature = "openblas"))]
fn openblas(_: Shape, _: &[f32], _: &[f32], _: &mut [f32]) { unreachable!() }

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(1);
    let cands: Vec<&str> = args.get(2).map(|s| s.split(',').collect()).unwrap_or(vec!["matrixmultiply", "gemm", "faer"]);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().unwrap();
    let sh = |name, m, k, n, ta, tb| Shape { m, k, n, ta, tb, name };
    let shapes = [
        sh("L fwd 0", 512, 256, 1024, false, false),
        sh("L fwd 1", 512, 1024, 1024, false, false),
        sh("L fwd 2", 512, 1024, 10, false, false),
        sh("L dW1 aT g", 1024, 512, 1024, true, false),
        sh("L dx1 g bT", 512, 1024, 1024, false, true),
        sh("L dW0 aT g", 256, 512, 1024, true, false),
        sh("L dx2 g bT", 512, 10, 1024, false, true),
        sh("M fwd 1", 128, 256, 256, false, false),
        sh("M dW1", 256, 128, 256, true, false),
        sh("M dx1", 128, 256, 256, false, true),
        sh("S fwd 1", 32, 64, 64, false, false),
        sh("S fwd 2", 32, 64, 4, false, false),
        sh("CNN-M conv1 fwd", 64*14*14, 288, 64, false, false),
        sh("CNN-M conv1 dW", 288, 64*14*14, 64, true, false),
        sh("CNN-M conv1 dx", 64*14*14, 64, 288, false, true),
        sh("CNN-M conv0 fwd", 64*28*28, 9, 32, false, false),
    ];
    print!("{:18}", "shape");
    for c in &cands { print!(" {:>15}", c); }
    println!("   (GFLOP/s, {} threads)", threads);
    for s in shapes {
        let a: Vec<f32> = (0..s.m * s.k).map(|i| ((i % 97) as f32 - 48.0) / 50.0).collect();
        let b: Vec<f32> = (0..s.k * s.n).map(|i| ((i % 89) as f32 - 44.0) / 50.0).collect();
        let mut c = vec![0f32; s.m * s.n];
        let flops = 2.0 * (s.m * s.k * s.n) as f64;
        let reps = ((2e9 / flops) as usize).clamp(5, 20000);
        print!("{:18}", s.name);
        let mut reference: Option<Vec<f32>> = None;
        for cand in &cands {
            for _ in 0..3 { mm(cand, s, &a, &b, &mut c, threads); }
            let mut times = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                for _ in 0..reps { mm(cand, s, &a, &b, &mut c, threads); }
                times.push(t.elapsed().as_secs_f64() / reps as f64);
            }
            times.sort_by(|x, y| x.partial_cmp(y).unwrap());
            print!(" {:>15.1}", flops / times[2] / 1e9);
            if let Some(r) = &reference {
                let err = r.iter().zip(&c).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                assert!(err < 1e-2, "{cand} {} err {err}", s.name);
            } else { reference = Some(c.clone()); }
        }
        println!();
    }
}
