// A C++ emulation of the AMX tile instructions that bf16_dot_cpu.cc uses, for testing the tile
// kernel on CPUs without AMX: bf16_dot_cpu.cc compiled with -DJAXDET_AMX_EMULATION sends its
// TILE_* macros and tile configuration calls here (the extension xla_ops.amx._bf16_dot_emulated,
// tests only).
//
// What is emulated, after the Intel 64 and IA-32 Architectures Software Developer's Manual
// (Vol. 1 ch. 18 "Intel AMX"; Vol. 2 LDTILECFG, STTILECFG, TILERELEASE, TILELOADD, TILESTORED,
// TILEZERO, TDPBF16PS):
//  * the tile register file of one thread: 8 tiles of 16 rows x 64 bytes, thread_local (each
//    thread of XLA's pool has its own, as each core has), with the palette-1 configuration:
//    rows and bytes per row of each tile;
//  * LDTILECFG: palette 0 is the initial state (no tiles); palette 1 checks the configuration as
//    the instruction does (#GP: reserved bytes, rows > 16, bytes per row > 64 or not a multiple
//    of 4 here, tiles 8-15 configured) and zeroes every tile. STTILECFG writes 64 zero bytes in
//    the initial state. TILERELEASE returns to it;
//  * TILELOADD reads rows x colsb bytes at base + r * stride, and zeroes the rest of the tile;
//    TILESTORED writes rows x colsb bytes there; TILEZERO zeroes the tile;
//  * TDPBF16PS as the SDM's pseudocode: for each row m of the destination, two float32
//    accumulators per column n (even and odd elements of the pairs) start at zero and take, over
//    the pairs k in order, the fused multiply-adds of the bfloat16 pairs of row m of A and row k
//    of B; then dest[m][n] += (even + odd). Every operation rounds to nearest even, treats
//    denormal inputs (bfloat16 and float32) as zero and flushes denormal results to zero, with
//    tininess detected after rounding (Vol. 1 4.9.1.5), whatever MXCSR holds; MXCSR is neither
//    consulted nor updated;
//  * the faults of a wrong use: a tile instruction without a configuration, on a tile the
//    configuration leaves empty, TDPBF16PS on shapes that do not chain or on tiles that are not
//    three different ones. Where the hardware raises #UD or #GP the emulation prints what and
//    aborts.
// Not emulated: palettes other than 1, start_row (restarting an interrupted TILELOADD or
// TILESTORED; it must be 0), and the other tile instructions. The NaN an invalid operation
// makes is the default one of the host's arithmetic, not necessarily the hardware's.
#ifndef XLA_OPS_AMX_TILE_EMULATION_H_
#define XLA_OPS_AMX_TILE_EMULATION_H_

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define TILE_EMULATION_MXCSR 1
#else
#include <cfenv>
#endif

namespace amx_emulation {

constexpr int kTiles = 8, kMaxRows = 16, kMaxColsb = 64;

struct TileFile {
  bool configured = false;
  uint16_t colsb[kTiles] = {};
  uint8_t rows[kTiles] = {};
  alignas(64) uint8_t data[kTiles][kMaxRows][kMaxColsb] = {};
};

inline TileFile& File() {
  thread_local TileFile file;
  return file;
}

[[noreturn]] inline void Fault(const char* instruction, const char* what) {
  std::fprintf(stderr, "AMX emulation: %s would fault: %s\n", instruction, what);
  std::abort();
}

inline void Release() { File() = TileFile(); }

// The 64-byte memory operand: byte 0 palette, 1 start_row, 2-15 reserved, 16-47 bytes per row
// of tiles 0-15 (16 bits each), 48-63 rows of tiles 0-15.
inline void LoadConfig(const void* memory) {
  const uint8_t* bytes = static_cast<const uint8_t*>(memory);
  if (bytes[0] == 0) {
    Release();
    return;
  }
  if (bytes[0] != 1) Fault("LDTILECFG", "palette other than 1 (the emulation has palette 1 only)");
  if (bytes[1] != 0) Fault("LDTILECFG", "start_row != 0 (not emulated)");
  for (int i = 2; i < 16; ++i) {
    if (bytes[i] != 0) Fault("LDTILECFG", "reserved bytes not zero");
  }
  TileFile file;
  file.configured = true;
  for (int t = 0; t < 16; ++t) {
    uint16_t colsb;
    std::memcpy(&colsb, bytes + 16 + 2 * t, 2);
    const uint8_t rows = bytes[48 + t];
    if (t >= kTiles) {
      if (colsb != 0 || rows != 0) Fault("LDTILECFG", "tiles 8-15 do not exist in palette 1");
      continue;
    }
    if (rows > kMaxRows || colsb > kMaxColsb) Fault("LDTILECFG", "a tile larger than 16 rows x 64 bytes");
    if ((rows == 0) != (colsb == 0)) Fault("LDTILECFG", "a tile with rows but no bytes per row, or the reverse");
    if (colsb % 4 != 0) Fault("LDTILECFG", "bytes per row not a multiple of 4 (the emulation's own check)");
    file.colsb[t] = colsb;
    file.rows[t] = rows;
  }
  File() = file;
}

inline void StoreConfig(void* memory) {
  uint8_t bytes[64] = {};
  const TileFile& file = File();
  if (file.configured) {
    bytes[0] = 1;
    for (int t = 0; t < kTiles; ++t) {
      std::memcpy(bytes + 16 + 2 * t, &file.colsb[t], 2);
      bytes[48 + t] = file.rows[t];
    }
  }
  std::memcpy(memory, bytes, 64);
}

inline TileFile& Configured(const char* instruction, int tile) {
  TileFile& file = File();
  if (!file.configured) Fault(instruction, "no tile configuration loaded (#UD)");
  if (tile < 0 || tile >= kTiles || file.rows[tile] == 0) Fault(instruction, "the tile is not configured (#UD)");
  return file;
}

inline void TileLoad(int tile, const void* base, int64_t stride_bytes) {
  TileFile& file = Configured("TILELOADD", tile);
  std::memset(file.data[tile], 0, sizeof(file.data[tile]));
  for (int r = 0; r < file.rows[tile]; ++r) {
    std::memcpy(file.data[tile][r], static_cast<const uint8_t*>(base) + r * stride_bytes, file.colsb[tile]);
  }
}

inline void TileStore(int tile, void* base, int64_t stride_bytes) {
  const TileFile& file = Configured("TILESTORED", tile);
  for (int r = 0; r < file.rows[tile]; ++r) {
    std::memcpy(static_cast<uint8_t*>(base) + r * stride_bytes, file.data[tile][r], file.colsb[tile]);
  }
}

inline void TileZero(int tile) {
  TileFile& file = Configured("TILEZERO", tile);
  std::memset(file.data[tile], 0, sizeof(file.data[tile]));
}

// Denormal inputs as zero of the same sign (DAZ).
inline float DenormalAsZero(float x) {
  return std::fabs(x) < std::numeric_limits<float>::min() ? std::copysign(0.0f, x) : x;
}

inline float FromBf16(uint16_t bits) {
  const uint32_t word = uint32_t{bits} << 16;  // make_fp32 of the SDM
  float x;
  std::memcpy(&x, &word, 4);
  return DenormalAsZero(x);
}

// The float32 nearest (ties to even) to the exact value that `exact` approximates, with a
// result that would be denormal flushed to zero of its sign (FTZ): tiny when, rounded to 24 bits
// with an unbounded exponent, it is below 2^-126, i.e. below 2^-126 - 2^-151 (at that midpoint
// the tie goes to 2^-126, whose significand is even).
inline float RoundFlushed(double exact) {
  constexpr double kTiny = 0x1p-126 - 0x1p-151;
  if (std::fabs(exact) < kTiny) return std::copysign(0.0f, static_cast<float>(exact));
  return static_cast<float>(exact);
}

// acc + x * y (x, y from bfloat16, so x * y has at most 16 significant bits and is exact in
// double) rounded once to float32: the double sum of a float32 and a product of at most 24 bits,
// rounded to float32, is the correctly rounded sum (double rounding is innocuous when the wider
// precision is at least 2p + 2: Figueroa, "When is double rounding innocuous?", SIGNUM 1995).
inline float FusedMultiplyAdd(float acc, float x, float y) {
  return RoundFlushed(static_cast<double>(DenormalAsZero(acc)) + static_cast<double>(x) * static_cast<double>(y));
}

inline float Add(float a, float b) {
  return RoundFlushed(static_cast<double>(DenormalAsZero(a)) + static_cast<double>(DenormalAsZero(b)));
}

// Round to nearest even, no DAZ or FTZ in the host's own arithmetic for the scope, and MXCSR
// (flags included) as it was afterwards.
class DefaultRounding {
 public:
#if TILE_EMULATION_MXCSR
  DefaultRounding() : saved_(_mm_getcsr()) { _mm_setcsr(0x1F80); }
  ~DefaultRounding() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#else
  DefaultRounding() : saved_(std::fegetround()) { std::fesetround(FE_TONEAREST); }
  ~DefaultRounding() { std::fesetround(saved_); }

 private:
  int saved_;
#endif
};

// TDPBF16PS dest, a, b: dest [M x N float32] += a [M x K pairs of bfloat16] . b [K x N pairs].
inline void DotProductBf16(int dest, int a, int b) {
  constexpr const char* kName = "TDPBF16PS";
  TileFile& file = Configured(kName, dest);
  Configured(kName, a);
  Configured(kName, b);
  if (dest == a || dest == b || a == b) Fault(kName, "the three tiles must be different (#UD)");
  if (file.colsb[a] / 4 != file.rows[b] || file.colsb[dest] != file.colsb[b] || file.rows[dest] != file.rows[a]) {
    Fault(kName, "the tiles' shapes do not chain (#UD)");
  }
  DefaultRounding rounding;
  const int rows = file.rows[dest], pairs = file.colsb[a] / 4, columns = file.colsb[dest] / 4;
  for (int m = 0; m < rows; ++m) {
    uint16_t a_row[kMaxColsb / 2];
    std::memcpy(a_row, file.data[a][m], sizeof(a_row));
    float temp[kMaxColsb / 2] = {};  // elements_temp: the even and odd products of each column
    for (int k = 0; k < pairs; ++k) {
      uint16_t b_row[kMaxColsb / 2];
      std::memcpy(b_row, file.data[b][k], sizeof(b_row));
      const float a0 = FromBf16(a_row[2 * k]), a1 = FromBf16(a_row[2 * k + 1]);
      for (int n = 0; n < columns; ++n) {
        temp[2 * n] = FusedMultiplyAdd(temp[2 * n], a0, FromBf16(b_row[2 * n]));
        temp[2 * n + 1] = FusedMultiplyAdd(temp[2 * n + 1], a1, FromBf16(b_row[2 * n + 1]));
      }
    }
    float c_row[kMaxColsb / 4];
    std::memcpy(c_row, file.data[dest][m], sizeof(c_row));
    for (int n = 0; n < columns; ++n) c_row[n] = Add(c_row[n], Add(temp[2 * n], temp[2 * n + 1]));
    std::memcpy(file.data[dest][m], c_row, 4 * columns);
  }
}

}  // namespace amx_emulation

#endif  // XLA_OPS_AMX_TILE_EMULATION_H_
