// Matrix products of bfloat16 operands into float32 on the AMX tiles of x86 CPUs (Intel Sapphire
// Rapids and later), as two XLA FFI custom calls:
//
//   bf16_dot        c [M, N] float32 = a [M, K] @ b [K, N]   (b_transposed: b is given as [N, K])
//   bf16_patch_dot  c [M, N] float32 = P(x) [M, k*k*C] @ b [k*k*C, N], P(x) the k x k patches of
//                   an image x [N_, H, W, C] (M = N_ * H * W, C a multiple of 32), read from x
//                   tile by tile and never written out (implicit im2col)
//
// with a, x and b bfloat16, row-major. The products and sums are float32 as the AMX instruction
// TDPBF16PS makes them (denormal inputs and results flushed to zero, as XLA's CPU dot does too;
// rounding to nearest even); the order of the sums differs from XLA's dot, so results agree to
// float32 rounding.
//
// How (Intel's optimization reference manual, "Intel AMX"; oneDNN's brgemm is built alike):
//  * b is copied once, in parallel, into the "VNNI" layout a B tile reads: for each 16 columns,
//    the pairs of rows (k, k + 1) interleaved, [N/16][K/2][16][2], zero-padded to K a multiple
//    of 32 and N a multiple of 32. Every read of b is inside [K, N] (or [N, K]).
//  * a is read in place, 16 rows x 32 elements a tile, except where a tile would cross the last
//    row or column: that tile is copied to a zero-padded buffer first. No read leaves a. The
//    patches' tiles are 16 pixels of an image row x 32 channels of one tap: rows of x, C apart,
//    read in place where they stay inside one image row and the tap inside the image, else
//    gathered (zeros outside the image). No read leaves x.
//  * c is computed in 32 x 32 blocks (2 x 2 accumulator tiles, 2 A tiles, 2 B tiles: the 8 tile
//    registers), K in chunks whose packed b fits the L2 cache, rows in groups whose part of c
//    does too. Blocks on the edges of c are stored through a buffer; no write leaves c.
//  * Work is split in groups of rows of c (and, where there are too few groups for the threads,
//    parts of their columns) over XLA's intra-op thread pool (cpu_common.h); each writes its own
//    part of c.
//
// Using the tiles needs the Linux permission for their state (arch_prctl ARCH_REQ_XCOMP_PERM),
// asked once per process; `amx_available()` says whether the CPU has the tiles and the OS gave
// the permission. Each thread loads its tile configuration at the start of its work and puts
// back what it found (another library's configuration, or none) at the end.
//
// Compiled with -DJAXDET_AMX_EMULATION (the test-only extension xla_ops.amx._bf16_dot_emulated,
// targets jaxdet_bf16_dot_emulated and jaxdet_bf16_patch_dot_emulated), the same kernel runs on
// any CPU: the tile instructions and the tile configuration go to the C++ emulation of
// tile_emulation.h instead of inline assembly, and `amx_available()` is true.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#if defined(JAXDET_AMX_EMULATION)
#define BF16_DOT_AMX 1
#include "tile_emulation.h"
#elif defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define BF16_DOT_AMX 1
#define BF16_DOT_AMX_HARDWARE 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "cpu_common.h"
#include "pybind11/pybind11.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace bf16_dot {
namespace {

constexpr int64_t kTileRows = 16;  // rows of an A, B (pairs of k) or C tile
constexpr int64_t kTileK = 32;     // bfloat16 elements of k in an A tile row (64 bytes)
constexpr int64_t kTileCols = 16;  // columns of a B or C tile
constexpr int64_t kBlock = 32;     // rows and columns of c per block: 2 x 2 tiles
// What the loops keep in the L2 cache for reuse (a chunk of packed b, a group's rows of c): each
// within this.
constexpr int64_t kReuseBytes = int64_t{1} << 20;
constexpr int64_t kWorkItemsPerThread = 4;  // at least, for the threads to share the work evenly

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

#if BF16_DOT_AMX_HARDWARE

// AddressSanitizer does not see what inline assembly reads and writes: in its builds
// (experiments/sanitize_roi_pool.sh), each 64-byte row a tile instruction reads or writes is
// touched first, a byte in every 8 (its shadow granularity), so that it checks the rows.
#if defined(__SANITIZE_ADDRESS__)
inline void CheckRows(const void* base, int64_t stride_bytes) {
  const volatile char* p = static_cast<const volatile char*>(base);
  for (int64_t r = 0; r < kTileRows; ++r) {
    for (int64_t byte = 0; byte < 64; byte += 8) (void)p[r * stride_bytes + byte];
    (void)p[r * stride_bytes + 63];
  }
}
#else
inline void CheckRows(const void*, int64_t) {}
#endif

// The AMX instructions, with "memory" clobbers (the compiler must not move the copies into and
// out of the edge buffers across them). Tile numbers are immediates; rows are 64 bytes.
#define TILE_LOAD(tile, base, stride_bytes)                                                       \
  do {                                                                                           \
    CheckRows(base, stride_bytes);                                                               \
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #tile ::"r"(base), "r"(static_cast<int64_t>(stride_bytes)) \
                     : "memory");                                                                \
  } while (0)
#define TILE_STORE(tile, base, stride_bytes)                                                      \
  do {                                                                                           \
    CheckRows(base, stride_bytes);                                                               \
    __asm__ volatile("tilestored %%tmm" #tile ", (%0,%1,1)" ::"r"(base), "r"(static_cast<int64_t>(stride_bytes)) \
                     : "memory");                                                                \
  } while (0)
#define TILE_ZERO(tile) __asm__ volatile("tilezero %%tmm" #tile ::: "memory")
#define TILE_DP(c, a, b) __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::: "memory")
#define TILE_STORE_CONFIG(config) __asm__ volatile("sttilecfg %0" : "=m"(config)::"memory")
#define TILE_LOAD_CONFIG(config) __asm__ volatile("ldtilecfg %0" ::"m"(config) : "memory")
#define TILE_RELEASE() __asm__ volatile("tilerelease" ::: "memory")

#elif BF16_DOT_AMX  // the emulation: the same operands, to tile_emulation.h

#define TILE_LOAD(tile, base, stride_bytes) amx_emulation::TileLoad(tile, base, stride_bytes)
#define TILE_STORE(tile, base, stride_bytes) amx_emulation::TileStore(tile, base, stride_bytes)
#define TILE_ZERO(tile) amx_emulation::TileZero(tile)
#define TILE_DP(c, a, b) amx_emulation::DotProductBf16(c, a, b)
#define TILE_STORE_CONFIG(config) amx_emulation::StoreConfig(&(config))
#define TILE_LOAD_CONFIG(config) amx_emulation::LoadConfig(&(config))
#define TILE_RELEASE() amx_emulation::Release()

#endif

#if BF16_DOT_AMX

struct alignas(64) TileConfig {
  uint8_t palette = 0;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads 64 bytes");

// Tiles 0-3: C [16 x 16 float32]; 4-5: A [16 x 32 bfloat16]; 6-7: B [16 pairs x 16 x 2].
TileConfig OurConfig() {
  TileConfig config;
  config.palette = 1;
  for (int t = 0; t < 8; ++t) {
    config.rows[t] = kTileRows;
    config.bytes_per_row[t] = 64;
  }
  return config;
}

// Loads our configuration for the scope, then puts back the one the thread had (or none).
class TileScope {
 public:
  TileScope() {
    TILE_STORE_CONFIG(previous_);
    const TileConfig ours = OurConfig();
    TILE_LOAD_CONFIG(ours);
  }
  ~TileScope() {
    if (previous_.palette != 0) {
      TILE_LOAD_CONFIG(previous_);
    } else {
      TILE_RELEASE();
    }
  }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;

 private:
  TileConfig previous_;
};

#if BF16_DOT_AMX_HARDWARE
bool AskForAmx() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  const bool amx_bf16 = edx & (1u << 22), amx_tile = edx & (1u << 24);
  if (!amx_bf16 || !amx_tile) return false;
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}
#else
bool AskForAmx() { return true; }  // the emulated tiles
#endif

#endif  // BF16_DOT_AMX

bool AmxAvailable() {
#if BF16_DOT_AMX
  static const bool available = AskForAmx();
  return available;
#else
  return false;
#endif
}

struct Dims {
  int64_t m, k, n;
  int64_t k_padded() const { return RoundUp(k, kTileK); }
  int64_t n_padded() const { return RoundUp(n, kBlock); }
};

// Where the kernel reads a 16 x 32 tile of a: its first row and the stride of its rows in bytes.
struct TileSource {
  const uint16_t* base;
  int64_t stride_bytes;
};

// a given as a row-major matrix [M, K]. A tile is read in place when it lies inside a, else
// copied into `edge` (zero-padded).
struct Matrix {
  const uint16_t* a;
  using Rows = int64_t;  // the tile's first row
  Rows RowsAt(int64_t row) const { return row; }
  TileSource Tile(int64_t row, int64_t k, const Dims& d, uint16_t* edge) const {
    if (row + kTileRows <= d.m && k + kTileK <= d.k) return {a + row * d.k + k, d.k * 2};
    std::memset(edge, 0, sizeof(uint16_t) * kTileRows * kTileK);
    const int64_t rows = std::max<int64_t>(0, std::min(kTileRows, d.m - row));
    const int64_t cols = std::max<int64_t>(0, std::min(kTileK, d.k - k));
    for (int64_t r = 0; r < rows; ++r) std::memcpy(edge + r * kTileK, a + (row + r) * d.k + k, sizeof(uint16_t) * cols);
    return {edge, kTileK * 2};
  }
};

// a = the k x k patches of an image x [N, H, W, C] (xla_ops.image_patches: row (n * H + y) * W + x_,
// column (ty * k + tx) * C + c holds x[n, y + ty - k / 2, x_ + tx - k / 2, c], zero outside the
// image), never written out: with C a multiple of 32, the 32 columns of a tile are 32 channels
// of one tap, and 16 pixels of one image row whose tap stays inside the image are 16 rows of x
// C elements apart. Such a tile is read from x in place; the others (crossing an image row or
// the image's border) are gathered into `edge`.
struct ImagePatches {
  const uint16_t* x;
  int64_t n, h, w, c, size;
  struct Rows {
    int64_t row, image, y, x;  // the tile's first row and its pixel
  };
  Rows RowsAt(int64_t row) const {
    const int64_t image = row / (h * w), rest = row % (h * w);
    return {row, image, rest / w, rest % w};
  }
  TileSource Tile(const Rows& r, int64_t k, const Dims& d, uint16_t* edge) const {
    const int64_t tap = k / c, channel = k % c, pad = size / 2;
    const int64_t dy = tap / size - pad, dx = tap % size - pad;
    const int64_t sy = r.y + dy, sx = r.x + dx;
    if (r.row + kTileRows <= d.m && r.x + kTileRows <= w && sy >= 0 && sy < h && sx >= 0 && sx + kTileRows <= w) {
      return {x + ((r.image * h + sy) * w + sx) * c + channel, c * 2};
    }
    int64_t image = r.image, y = r.y, px = r.x;  // pixel of row r.row + i, advanced without division
    for (int64_t i = 0; i < kTileRows; ++i) {
      uint16_t* dst = edge + i * kTileK;
      if (r.row + i < d.m && y + dy >= 0 && y + dy < h && px + dx >= 0 && px + dx < w) {
        std::memcpy(dst, x + ((image * h + y + dy) * w + px + dx) * c + channel, sizeof(uint16_t) * kTileK);
      } else {
        std::memset(dst, 0, sizeof(uint16_t) * kTileK);
      }
      if (++px == w) {
        px = 0;
        if (++y == h) y = 0, ++image;
      }
    }
    return {edge, kTileK * 2};
  }
};

#if BF16_DOT_AMX

// One panel of b in the layout of B tiles: columns [n0, n0 + 32), rows [k0, k1) (k0, k1
// multiples of 32), as two 16-column tiles one after the other, each [(k1 - k0) / 2 pairs][16][2]:
//   dst[((t * pairs + p) * 16 + col) * 2 + e] = b[k0 + 2p + e, n0 + 16t + col], zero outside b.
void PackPanel(const uint16_t* b, bool transposed, const Dims& d, int64_t n0, int64_t k0, int64_t k1,
               uint16_t* dst) {
  const int64_t pairs = (k1 - k0) / 2;
  const int64_t k_end = std::min(k1, d.k);          // rows of b inside it
  const int64_t cols = std::min(kBlock, d.n - n0);  // columns of b inside it
  // Element (k, column i of the panel) goes to dst[Offset(k, i)].
  const auto offset = [&](int64_t k, int64_t i) {
    return ((i / kTileCols * pairs + (k - k0) / 2) * kTileCols + i % kTileCols) * 2 + (k - k0) % 2;
  };
  if (transposed) {  // b is [N, K]: rows n of it read along
    for (int64_t i = 0; i < cols; ++i) {
      const uint16_t* src = b + (n0 + i) * d.k;
      for (int64_t k = k0; k < k_end; ++k) dst[offset(k, i)] = src[k];
    }
  } else {  // b is [K, N]: the panel's part of rows k read along
    for (int64_t k = k0; k < k_end; ++k) {
      const uint16_t* src = b + k * d.n + n0;
      for (int64_t i = 0; i < cols; ++i) dst[offset(k, i)] = src[i];
    }
  }
  // Zeros past b's last column and last row.
  for (int64_t i = cols; i < kBlock; ++i) {
    for (int64_t k = k0; k < k1; ++k) dst[offset(k, i)] = 0;
  }
  for (int64_t i = 0; i < cols; ++i) {
    for (int64_t k = k_end; k < k1; ++k) dst[offset(k, i)] = 0;
  }
}

// The C tile at (row, col) of c is inside c.
inline bool Inside(const Dims& d, int64_t row, int64_t col) {
  return row + kTileRows <= d.m && col + kTileCols <= d.n;
}

// Copies between an edge C tile of c and a 16 x 16 buffer, only the part inside c.
inline void CopyEdgeOut(const float* tile, float* c, const Dims& d, int64_t row, int64_t col) {
  const int64_t rows = std::max<int64_t>(0, std::min(kTileRows, d.m - row));
  const int64_t cols = std::max<int64_t>(0, std::min(kTileCols, d.n - col));
  if (cols == 0) return;  // the tile lies right of c: no pointer into it is formed
  for (int64_t r = 0; r < rows; ++r) std::memcpy(c + (row + r) * d.n + col, tile + r * kTileCols, sizeof(float) * cols);
}
inline void CopyEdgeIn(const float* c, float* tile, const Dims& d, int64_t row, int64_t col) {
  std::memset(tile, 0, sizeof(float) * kTileRows * kTileCols);
  const int64_t rows = std::max<int64_t>(0, std::min(kTileRows, d.m - row));
  const int64_t cols = std::max<int64_t>(0, std::min(kTileCols, d.n - col));
  if (cols == 0) return;
  for (int64_t r = 0; r < rows; ++r) std::memcpy(tile + r * kTileCols, c + (row + r) * d.n + col, sizeof(float) * cols);
}

// Loads (or zeroes, on the first chunk) accumulator `tile` for c at (row, col).
#define LOAD_C(tile, row, col)                                   \
  if (first) {                                                   \
    TILE_ZERO(tile);                                             \
  } else if (Inside(d, row, col)) {                              \
    TILE_LOAD(tile, c + (row) * d.n + (col), d.n * 4);           \
  } else {                                                       \
    CopyEdgeIn(c, edge_c, d, row, col);                          \
    TILE_LOAD(tile, edge_c, kTileCols * 4);                      \
  }
#define STORE_C(tile, row, col)                                  \
  if (Inside(d, row, col)) {                                     \
    TILE_STORE(tile, c + (row) * d.n + (col), d.n * 4);          \
  } else {                                                       \
    TILE_STORE(tile, edge_c, kTileCols * 4);                     \
    CopyEdgeOut(edge_c, c, d, row, col);                         \
  }

// The A tiles of rows [m0, m0 + 32) over K steps [k0, k0 + 32 * steps): tiles[2 s] and
// tiles[2 s + 1] for step s, the gathered ones in edges (2 * steps tiles of 16 x 32). Made once
// for all the column blocks that use them.
template <typename A>
void PrepareTiles(const A& a, const Dims& d, int64_t m0, int64_t k0, int64_t steps, TileSource* tiles,
                  uint16_t* edges) {
  const typename A::Rows rows0 = a.RowsAt(m0), rows1 = a.RowsAt(m0 + kTileRows);
  for (int64_t s = 0; s < steps; ++s) {
    tiles[2 * s] = a.Tile(rows0, k0 + s * kTileK, d, edges + 2 * s * kTileRows * kTileK);
    tiles[2 * s + 1] = a.Tile(rows1, k0 + s * kTileK, d, edges + (2 * s + 1) * kTileRows * kTileK);
  }
}

// c[m0:m0+32, n0:n0+32] (+)= a[m0:m0+32, k0:k0+32*steps] @ b[k0:k0+32*steps, n0:n0+32], with a's
// tiles from PrepareTiles and b's two column tiles packed from k0 on at b0 and b1.
void Block(const TileSource* tiles, const uint16_t* b0, const uint16_t* b1, float* c, const Dims& d, int64_t m0,
           int64_t n0, int64_t steps, bool first) {
  alignas(64) float edge_c[kTileRows * kTileCols];
  const int64_t m1 = m0 + kTileRows, n1 = n0 + kTileCols;
  LOAD_C(0, m0, n0);
  LOAD_C(1, m0, n1);
  LOAD_C(2, m1, n0);
  LOAD_C(3, m1, n1);
  for (int64_t s = 0; s < steps; ++s) {
    TILE_LOAD(4, tiles[2 * s].base, tiles[2 * s].stride_bytes);
    TILE_LOAD(5, tiles[2 * s + 1].base, tiles[2 * s + 1].stride_bytes);
    TILE_LOAD(6, b0 + s * kTileK * kTileCols, 64);
    TILE_LOAD(7, b1 + s * kTileK * kTileCols, 64);
    TILE_DP(0, 4, 6);
    TILE_DP(1, 4, 7);
    TILE_DP(2, 5, 6);
    TILE_DP(3, 5, 7);
  }
  STORE_C(0, m0, n0);
  STORE_C(1, m0, n1);
  STORE_C(2, m1, n0);
  STORE_C(3, m1, n1);
}

// The chunks of [0, total) (a multiple of 32): as few as keep each within max_chunk, equal, 32s.
int64_t ChunkOf(int64_t total, int64_t max_chunk) {
  const int64_t chunks = (total + max_chunk - 1) / max_chunk;
  return RoundUp((total + chunks - 1) / chunks, kTileK);
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<uint16_t, FreeDeleter>;
Buffer Allocate(int64_t elements) {
  return Buffer(static_cast<uint16_t*>(std::aligned_alloc(64, RoundUp(sizeof(uint16_t) * elements, 64))));
}

// b packed whole once, shared; the threads take groups of 32-row panels of c (and, where there
// are too few groups to share, parts of their columns). Per group, K in chunks: the chunk of
// packed b and the group's rows of c both stay in the L2 cache, and a is read once per part.
template <typename A>
ffi::Error Product(ffi::ThreadPool& pool, const A& a, const uint16_t* b, bool transposed, float* c,
                   const Dims& d) {
  const int64_t kp = d.k_padded(), np = d.n_padded();
  const int64_t row_blocks = RoundUp(d.m, kBlock) / kBlock, col_blocks = np / kBlock;
  Buffer packed = Allocate(kp * np);
  if (packed == nullptr) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "bf16_dot: no memory to pack b");
  xla_ops::AdviseHugePages(packed.get(), sizeof(uint16_t) * kp * np);
  xla_ops::ParallelFor(pool, col_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t cb = begin; cb < end; ++cb) PackPanel(b, transposed, d, cb * kBlock, 0, kp, packed.get() + cb * kp * kBlock);
  });
  const int64_t chunk = ChunkOf(kp, std::max(kTileK, kReuseBytes / (2 * np) / kTileK * kTileK));
  const int64_t group = std::max<int64_t>(1, kReuseBytes / (kBlock * np * 4));
  const int64_t groups = (row_blocks + group - 1) / group;
  const int64_t parts = std::min(col_blocks, (kWorkItemsPerThread * std::max<int64_t>(1, pool.num_threads()) + groups - 1) / groups);
  const int64_t part = (col_blocks + parts - 1) / parts;  // column blocks per part
  std::atomic<bool> out_of_memory{false};
  xla_ops::ParallelFor(pool, groups * parts, 1, [&](int64_t begin, int64_t end) {
    const int64_t max_steps = chunk / kTileK;
    std::unique_ptr<TileSource[]> tiles(new (std::nothrow) TileSource[2 * max_steps]);
    Buffer edges = Allocate(2 * max_steps * kTileRows * kTileK);
    if (tiles == nullptr || edges == nullptr) {
      out_of_memory = true;
      return;
    }
    TileScope scope;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t g = item / parts, p = item % parts;
      const int64_t rb_end = std::min(row_blocks, (g + 1) * group), cb_end = std::min(col_blocks, (p + 1) * part);
      for (int64_t k0 = 0; k0 < kp; k0 += chunk) {
        const int64_t steps = (std::min(kp, k0 + chunk) - k0) / kTileK;
        for (int64_t rb = g * group; rb < rb_end; ++rb) {
          PrepareTiles(a, d, rb * kBlock, k0, steps, tiles.get(), edges.get());
          for (int64_t cb = p * part; cb < cb_end; ++cb) {
            const uint16_t* b0 = packed.get() + cb * kp * kBlock + k0 * kTileCols;
            Block(tiles.get(), b0, b0 + kp * kTileCols, c, d, rb * kBlock, cb * kBlock, steps, k0 == 0);
          }
        }
      }
    }
  });
  if (out_of_memory) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "bf16_dot: no memory for the A tiles");
  return ffi::Error::Success();
}

#endif  // BF16_DOT_AMX

// c = a @ b for any a (Matrix or ImagePatches), after the checks both custom calls share.
template <typename A>
ffi::Error Run(ffi::ThreadPool& pool, const A& a, ffi::AnyBuffer b, bool b_transposed, ffi::Result<ffi::AnyBuffer>& c,
               const Dims& d, const char* name) {
  const auto bd = b.dimensions(), cd = c->dimensions();
  if (bd.size() != 2 || b.element_type() != ffi::BF16) {
    return ffi::Error::InvalidArgument(std::string(name) + ": b must be a bfloat16 matrix");
  }
  if ((b_transposed ? bd[1] : bd[0]) != d.k || (b_transposed ? bd[0] : bd[1]) != d.n) {
    return ffi::Error::InvalidArgument(std::string(name) + ": b's rows (columns, transposed) must match a's columns");
  }
  if (cd.size() != 2 || cd[0] != d.m || cd[1] != d.n || c->element_type() != ffi::F32) {
    return ffi::Error::InvalidArgument(std::string(name) + ": the result must be float32 [M, N]");
  }
  auto* out = c->typed_data<float>();
  if (d.m == 0 || d.n == 0) return ffi::Error::Success();
  if (d.k == 0) {
    std::memset(out, 0, sizeof(float) * d.m * d.n);
    return ffi::Error::Success();
  }
  if (!AmxAvailable()) {
    return ffi::Error(ffi::ErrorCode::kUnimplemented,
                      std::string(name) + ": this CPU or OS gives no AMX tiles (xla_ops.amx falls back to XLA's dot)");
  }
#if BF16_DOT_AMX
  xla_ops::AdviseHugePages(out, sizeof(float) * d.m * d.n);
  return Product(pool, a, reinterpret_cast<const uint16_t*>(b.untyped_data()), b_transposed, out, d);
#else
  return ffi::Error::Success();
#endif
}

ffi::Error Bf16DotImpl(ffi::ThreadPool pool, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> c,
                       bool b_transposed) {
  const auto ad = a.dimensions(), bd = b.dimensions();
  if (ad.size() != 2 || bd.size() != 2 || a.element_type() != ffi::BF16) {
    return ffi::Error::InvalidArgument("bf16_dot: a and b must be bfloat16 matrices");
  }
  const Dims d{ad[0], ad[1], b_transposed ? bd[0] : bd[1]};
  return Run(pool, Matrix{reinterpret_cast<const uint16_t*>(a.untyped_data())}, b, b_transposed, c, d, "bf16_dot");
}

ffi::Error Bf16PatchDotImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> c,
                            int64_t size) {
  const auto xd = x.dimensions(), bd = b.dimensions();
  if (xd.size() != 4 || x.element_type() != ffi::BF16) {
    return ffi::Error::InvalidArgument("bf16_patch_dot: x must be bfloat16 [N, H, W, C]");
  }
  if (size < 1 || size % 2 == 0 || xd[3] % kTileK != 0 || bd.size() != 2) {
    return ffi::Error::InvalidArgument("bf16_patch_dot: the window size must be odd, C a multiple of 32");
  }
  const ImagePatches a{reinterpret_cast<const uint16_t*>(x.untyped_data()), xd[0], xd[1], xd[2], xd[3], size};
  const Dims d{a.n * a.h * a.w, size * size * a.c, bd[1]};
  return Run(pool, a, b, false, c, d, "bf16_patch_dot");
}

}  // namespace
}  // namespace bf16_dot

XLA_FFI_DEFINE_HANDLER_SYMBOL(Bf16DotCpu, bf16_dot::Bf16DotImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // a [M, K] bfloat16
                                  .Arg<ffi::AnyBuffer>()  // b [K, N] bfloat16; [N, K] when transposed
                                  .Ret<ffi::AnyBuffer>()  // c [M, N] float32
                                  .Attr<bool>("b_transposed"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(Bf16PatchDotCpu, bf16_dot::Bf16PatchDotImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // x [N, H, W, C] bfloat16, C a multiple of 32
                                  .Arg<ffi::AnyBuffer>()  // b [k * k * C, O] bfloat16
                                  .Ret<ffi::AnyBuffer>()  // c [N * H * W, O] float32
                                  .Attr<int64_t>("size"));

#if defined(JAXDET_AMX_EMULATION)
#define BF16_DOT_MODULE _bf16_dot_emulated
#define BF16_DOT_TARGET_SUFFIX "_emulated"
#else
#define BF16_DOT_MODULE _bf16_dot_cpu
#define BF16_DOT_TARGET_SUFFIX ""
#endif

PYBIND11_MODULE(BF16_DOT_MODULE, m) {
  m.def("registrations", []() {
    pybind11::dict d;
    d["jaxdet_bf16_dot" BF16_DOT_TARGET_SUFFIX] = pybind11::capsule(reinterpret_cast<void*>(Bf16DotCpu));
    d["jaxdet_bf16_patch_dot" BF16_DOT_TARGET_SUFFIX] = pybind11::capsule(reinterpret_cast<void*>(Bf16PatchDotCpu));
    return d;
  });
  m.def("amx_available", &bf16_dot::AmxAvailable,
        "Whether this CPU has AMX tiles with bfloat16 products and the OS lets this process use them.");
}
