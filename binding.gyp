{
  "targets": [
    {
      "target_name": "verity_kernels",
      "sources": ["native/verity_kernels.c"],
      "cflags": ["-O3", "-std=c11", "-ffp-contract=off", "-fno-fast-math", "-Wall", "-Wno-deprecated-declarations"],
      "cflags!": ["-ffast-math"],
      "xcode_settings": { "OTHER_CFLAGS": ["-O3", "-ffp-contract=off"] }
    }
  ]
}
