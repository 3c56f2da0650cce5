// The AMX tiles' bfloat16 peak on one core: TDPBF16PS into four accumulator tiles, operands
// already in tile registers (no memory traffic), after asking Linux for the tiles' state
// (arch_prctl ARCH_REQ_XCOMP_PERM). The ceiling that xla_ops/csrc/bf16_dot_cpu.cc's GFLOP/s
// (experiments/bench_bf16_dot.py) compare with.
//
//   gcc -O2 -mamx-tile -mamx-bf16 experiments/amx_peak.c -o /tmp/amx_peak && /tmp/amx_peak
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

typedef struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t bytes_per_row[16];
  uint8_t rows[16];
} TileConfig;

int main(void) {
  if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) {
    printf("the OS refused the AMX tile state (or the CPU has none)\n");
    return 1;
  }
  TileConfig config;
  memset(&config, 0, sizeof config);
  config.palette = 1;
  for (int t = 0; t < 8; ++t) {
    config.bytes_per_row[t] = 64;
    config.rows[t] = 16;
  }
  _tile_loadconfig(&config);
  static uint16_t operand[16 * 32] __attribute__((aligned(64)));
  static float result[16 * 16];
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, operand, 64);
  _tile_loadd(5, operand, 64);
  _tile_loadd(6, operand, 64);
  _tile_loadd(7, operand, 64);
  const long iterations = 50000000;
  struct timespec start, end;
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (long i = 0; i < iterations; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  clock_gettime(CLOCK_MONOTONIC, &end);
  _tile_stored(0, result, 64);
  _tile_release();
  const double seconds = (end.tv_sec - start.tv_sec) + 1e-9 * (end.tv_nsec - start.tv_nsec);
  const double flops = 4.0 * iterations * 16 * 16 * 32 * 2;  // 16x16 results, 32 products each
  printf("TDPBF16PS, one core: %.0f GFLOP/s (%.2f s)\n", flops / seconds / 1e9, seconds);
  return 0;
}
