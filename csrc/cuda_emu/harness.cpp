// The CPU emulator's driver: runs one CUDA op call on the emulated device with the kernels the torch glue would
// choose (csrc/cuda/kernel_choice.h), on raw binary tensors. arseg_ops/_cuda_emu.py builds and calls it, one process
// per call (an emulation abort, a deadlock report or a sanitizer report ends that process, not the tests).
//
//   harness op=NAME experimental=0|1 dtype=f64|f32|f16|bf16 layout=nchw|nhwc KEY=VALUE... in=a.bin,b.bin out=c.bin
//   ops and their tensors (in / out, every file in logical NCHW order):
//     mv_warp_forward            N C H W Hb Wb sx sy mode padding   in feature,mv              out out
//     mv_warp_backward_feature   (same sizes)                       in grad_output,mv          out grad_feature
//     mv_warp_backward_mv        (same sizes)                       in grad_output,feature,mv  out grad_mv
//     local_attn_forward         N C Cv H W K scale padding         in query,key,value         out out
//     local_attn_backward        (same sizes)                       in grad_output,query,key,value  out dq,dk,dv
//     creff_forward              N C H W h w Hb Wb K scale msx msy  in key,mv,lr,weight,bias   out out
//       (layout=nhwc: key, lr and out channels_last, as the glue's creff_output_channels_last)
//     creff_backward             (same sizes)        in grad_output,key,mv,lr,weight,bias   out d_hr,d_lr,d_weight,d_bias
//       (NCHW kernels: the glue makes every input contiguous; d_hr / d_lr are d out / d (warped key, resized lr))
// layout is the layout of the op's inputs as the glue sees them (nhwc: strictly channels_last). Kernels that run
// NCHW get NCHW copies, as the glue's .contiguous() makes; NHWC kernels get NHWC buffers.
// Every buffer the kernels see is an exact-size heap block (AddressSanitizer's redzone right after the last
// element), outputs and workspaces start as 0xFF bytes (NaN), misalign=1 offsets each buffer by one element (the
// kernels' scalar fallbacks). The last line on stderr is
//   EMU_RESULT kernel=NAME layout=nchw|nhwc blocks=N errors=N
// kernel=composed (creff only): the glue would compose mv_warp and local_attn instead; nothing is written.
// Exit status: 0 ok, 2 bad arguments, 3 the emulator reported errors, 4 a launcher returned an error.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "cuda/kernel_choice.h"
#include "cuda/kernels.h"

namespace emu {
int error_count();
long blocks_run();
}  // namespace emu

namespace {

using namespace arseg;
using namespace arseg::cuda;

std::map<std::string, std::string> g_args;
bool g_misalign = false;

[[noreturn]] void usage(const std::string& why) {
  fprintf(stderr, "harness: %s\n", why.c_str());
  exit(2);
}

const std::string& arg(const std::string& key) {
  auto it = g_args.find(key);
  if (it == g_args.end()) usage("missing argument " + key);
  return it->second;
}
int64_t arg_i(const std::string& key) { return atoll(arg(key).c_str()); }
double arg_d(const std::string& key) { return atof(arg(key).c_str()); }

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = s.find(',', start);
    out.push_back(s.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

// One device buffer: exact size (plus the misalignment offset), released at exit.
struct Buf {
  void* base = nullptr;
  char* ptr = nullptr;
  size_t bytes = 0;
};

Buf alloc(size_t bytes, size_t elem, int fill) {
  Buf b;
  b.bytes = bytes;
  const size_t extra = g_misalign ? elem : 0;
  if (posix_memalign(&b.base, 64, bytes + extra ? bytes + extra : 1)) usage("out of memory");
  b.ptr = static_cast<char*>(b.base) + extra;
  if (fill >= 0) memset(b.ptr, fill, bytes);
  return b;
}

std::vector<char> read_file(const std::string& path, size_t bytes) {
  std::vector<char> data(bytes);
  FILE* f = fopen(path.c_str(), "rb");
  if (!f || fread(data.data(), 1, bytes, f) != bytes)
    usage("cannot read " + std::to_string(bytes) + " bytes from " + path);
  fclose(f);
  return data;
}

void write_file(const std::string& path, const std::vector<char>& data) {
  FILE* f = fopen(path.c_str(), "wb");
  if (!f || fwrite(data.data(), 1, data.size(), f) != data.size()) usage("cannot write " + path);
  fclose(f);
}

// NCHW <-> NHWC element copies (elements of `es` bytes) for a (N, C, H, W) tensor.
void permute(const char* src, char* dst, int64_t N, int64_t C, int64_t HW, size_t es, bool to_nhwc) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < HW; ++i) {
        const int64_t nchw = (n * C + c) * HW + i, nhwc = (n * HW + i) * C + c;
        memcpy(dst + (to_nhwc ? nhwc : nchw) * es, src + (to_nhwc ? nchw : nhwc) * es, es);
      }
}

// A 4-D tensor of the op: read from its NCHW file into a device buffer of the kernel's layout, or written back.
struct Tensor4 {
  int64_t N, C, H, W;
  size_t bytes(size_t es) const { return static_cast<size_t>(N * C * H * W) * es; }
};

Buf load(const std::string& path, const Tensor4& t, size_t es, bool nhwc) {
  const std::vector<char> data = read_file(path, t.bytes(es));
  Buf b = alloc(t.bytes(es), es, -1);
  if (nhwc)
    permute(data.data(), b.ptr, t.N, t.C, t.H * t.W, es, true);
  else
    memcpy(b.ptr, data.data(), data.size());
  return b;
}

void store(const std::string& path, const Buf& b, const Tensor4& t, size_t es, bool nhwc) {
  std::vector<char> data(b.bytes);
  if (nhwc)
    permute(b.ptr, data.data(), t.N, t.C, t.H * t.W, es, false);
  else
    memcpy(data.data(), b.ptr, b.bytes);
  write_file(path, data);
}

size_t elem_size(ElemType t) { return t == ElemType::Float64 ? 8 : (t == ElemType::Float32 ? 4 : 2); }

ElemType parse_dtype(const std::string& s) {
  if (s == "f64") return ElemType::Float64;
  if (s == "f32") return ElemType::Float32;
  if (s == "f16") return ElemType::Float16;
  if (s == "bf16") return ElemType::BFloat16;
  usage("dtype " + s);
}

template <class F>
void dispatch(ElemType t, F&& f) {
  switch (t) {
    case ElemType::Float64: return f(double{});
    case ElemType::Float32: return f(float{});
    case ElemType::Float16: return f(__half{});
    case ElemType::BFloat16: return f(__nv_bfloat16{});
  }
}

// The v2 local_attn kernels have no double instantiation: reaching them with double is a harness bug.
template <class F>
void dispatch_no_double(ElemType t, F&& f) {
  if (t == ElemType::Float64) usage("the v2 local_attn kernels have no float64 version");
  dispatch(t, f);
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    fprintf(stderr, "harness: %s returned %s\n", what, cudaGetErrorString(e));
    exit(4);
  }
}

template <typename T>
const T* in(const Buf& b) {
  return reinterpret_cast<const T*>(b.ptr);
}
template <typename T>
T* out(Buf& b) {
  return reinterpret_cast<T*>(b.ptr);
}

const char* g_kernel = "none";
bool g_kernel_nhwc = false;

void run_mv_warp(const std::string& op, ElemType type, bool experimental, bool nhwc_in) {
  MvWarpParams p{arg_i("N"), arg_i("C"), arg_i("H"), arg_i("W"), arg_i("Hb"), arg_i("Wb"), arg_d("sx"), arg_d("sy"),
                 arg("mode") == "nearest" ? WarpMode::Nearest : WarpMode::Bilinear,
                 arg("padding") == "border" ? WarpPadding::Border : WarpPadding::Zeros};
  const Layout layout = nhwc_in ? Layout::NHWC : Layout::NCHW;
  const bool v2 = mv_warp_runs_v2(experimental, p, layout);
  const bool nhwc = v2 && layout == Layout::NHWC;
  g_kernel_nhwc = nhwc;
  const size_t es = elem_size(type);
  const Tensor4 feat{p.N, p.C, p.H, p.W}, motion{p.N, 2, p.Hb, p.Wb};
  const std::vector<std::string> ins = split(arg("in")), outs = split(arg("out"));
  dispatch(type, [&](auto tag) {
    using T = decltype(tag);
    if (op == "mv_warp_forward") {
      Buf f = load(ins.at(0), feat, es, nhwc), m = load(ins.at(1), motion, es, false);
      Buf o = alloc(feat.bytes(es), es, 0xff);
      g_kernel = v2 ? "mv_warp_v2_forward" : "mv_warp_forward";
      check(v2 ? mv_warp_v2_forward<T>(p, layout, in<T>(f), in<T>(m), out<T>(o), nullptr)
               : mv_warp_forward<T>(p, in<T>(f), in<T>(m), out<T>(o), nullptr),
            g_kernel);
      store(outs.at(0), o, feat, es, nhwc);
    } else if (op == "mv_warp_backward_feature") {
      Buf g = load(ins.at(0), feat, es, nhwc), m = load(ins.at(1), motion, es, false);
      Buf o = alloc(feat.bytes(es), es, 0xff);
      g_kernel = v2 ? "mv_warp_v2_backward_feature" : "mv_warp_backward_feature";
      if (v2) {
        check(mv_warp_v2_backward_feature<T>(p, layout, in<T>(g), in<T>(m), out<T>(o), nullptr), g_kernel);
      } else {
        Buf ws = alloc(mv_warp_backward_feature_workspace<T>(p), 8, 0xff);
        check(mv_warp_backward_feature<T>(p, in<T>(g), in<T>(m), out<T>(o), ws.bytes ? ws.ptr : nullptr, nullptr),
              g_kernel);
      }
      store(outs.at(0), o, feat, es, nhwc);
    } else {
      Buf g = load(ins.at(0), feat, es, nhwc), f = load(ins.at(1), feat, es, nhwc);
      Buf m = load(ins.at(2), motion, es, false);
      Buf o = alloc(motion.bytes(es), es, 0xff);
      g_kernel = v2 ? "mv_warp_v2_backward_mv" : "mv_warp_backward_mv";
      const size_t wsb = v2 ? mv_warp_v2_backward_mv_workspace<T>(p, layout) : mv_warp_backward_mv_workspace<T>(p);
      Buf ws = alloc(wsb, 8, 0xff);
      void* w = ws.bytes ? ws.ptr : nullptr;
      check(v2 ? mv_warp_v2_backward_mv<T>(p, layout, in<T>(g), in<T>(f), in<T>(m), out<T>(o), w, nullptr)
               : mv_warp_backward_mv<T>(p, in<T>(g), in<T>(f), in<T>(m), out<T>(o), w, nullptr),
            g_kernel);
      store(outs.at(0), o, motion, es, false);
    }
  });
}

void run_local_attn(const std::string& op, ElemType type, bool experimental, bool nhwc_in) {
  LocalAttnParams p{arg_i("N"), arg_i("C"), arg_i("Cv"), arg_i("H"), arg_i("W"), static_cast<int>(arg_i("K")),
                    arg_d("scale"), arg("padding") == "exclude" ? AttnPadding::Exclude : AttnPadding::Zeros};
  const bool backward = op == "local_attn_backward";
  LocalAttnV2Params p2{};
  const bool v2 = local_attn_runs_v2(experimental, type, p, nhwc_in, &p2);
  const bool nhwc = v2 && nhwc_in;
  g_kernel_nhwc = nhwc;
  const size_t es = elem_size(type);
  const Tensor4 qk{p.N, p.C, p.H, p.W}, vo{p.N, p.Cv, p.H, p.W};
  const std::vector<std::string> ins = split(arg("in")), outs = split(arg("out"));
  if (!backward) {
    Buf q = load(ins.at(0), qk, es, nhwc), k = load(ins.at(1), qk, es, nhwc), v = load(ins.at(2), vo, es, nhwc);
    Buf o = alloc(vo.bytes(es), es, 0xff);
    g_kernel = v2 ? "local_attn_v2_forward" : "local_attn_forward";
    if (v2) {
      dispatch_no_double(type, [&](auto tag) {
        using T = decltype(tag);
        check(local_attn_v2_forward<T>(p2, in<T>(q), in<T>(k), in<T>(v), out<T>(o), nullptr), g_kernel);
      });
    } else {
      dispatch(type, [&](auto tag) {
        using T = decltype(tag);
        check(local_attn_forward<T>(p, in<T>(q), in<T>(k), in<T>(v), out<T>(o), nullptr), g_kernel);
      });
    }
    store(outs.at(0), o, vo, es, nhwc);
    return;
  }
  Buf g = load(ins.at(0), vo, es, nhwc), q = load(ins.at(1), qk, es, nhwc), k = load(ins.at(2), qk, es, nhwc);
  Buf v = load(ins.at(3), vo, es, nhwc);
  Buf dq = alloc(qk.bytes(es), es, 0xff), dk = alloc(qk.bytes(es), es, 0xff), dv = alloc(vo.bytes(es), es, 0xff);
  g_kernel = v2 ? "local_attn_v2_backward" : "local_attn_backward";
  if (v2) {
    Buf ws = alloc(local_attn_v2_backward_workspace(p2), 4, 0xff);
    dispatch_no_double(type, [&](auto tag) {
      using T = decltype(tag);
      check(local_attn_v2_backward<T>(p2, in<T>(g), in<T>(q), in<T>(k), in<T>(v), out<T>(dq), out<T>(dk),
                                      out<T>(dv), ws.ptr, nullptr),
            g_kernel);
    });
  } else {
    dispatch(type, [&](auto tag) {
      using T = decltype(tag);
      Buf ws = alloc(local_attn_backward_workspace<T>(p), 8, 0xff);
      check(local_attn_backward<T>(p, in<T>(g), in<T>(q), in<T>(k), in<T>(v), out<T>(dq), out<T>(dk), out<T>(dv),
                                   ws.ptr, nullptr),
            g_kernel);
    });
  }
  store(outs.at(0), dq, qk, es, nhwc);
  store(outs.at(1), dk, qk, es, nhwc);
  store(outs.at(2), dv, vo, es, nhwc);
}

CreffParams creff_params() {
  return {arg_i("N"), arg_i("C"), arg_i("H"), arg_i("W"), arg_i("h"), arg_i("w"), arg_i("Hb"), arg_i("Wb"),
          static_cast<int>(arg_i("K")), arg_d("scale"), arg_d("msx"), arg_d("msy")};
}

void run_creff_backward(ElemType type, bool experimental) {
  const CreffParams p = creff_params();
  if (!creff_runs_fused(experimental, type, p)) {
    g_kernel = "composed";
    return;
  }
  g_kernel = "creff_backward";
  const size_t es = elem_size(type);
  const Tensor4 key{p.N, p.C, p.H, p.W}, motion{p.N, 2, p.Hb, p.Wb}, lr{p.N, p.C, p.h, p.w};
  const Tensor4 weight{3, p.C, 3, 3}, bias{1, 1, 3, p.C};
  const std::vector<std::string> ins = split(arg("in")), outs = split(arg("out"));
  Buf g = load(ins.at(0), key, es, false), f = load(ins.at(1), key, es, false);
  Buf m = load(ins.at(2), motion, es, false), l = load(ins.at(3), lr, es, false);
  Buf w = load(ins.at(4), weight, es, false), b = load(ins.at(5), bias, es, false);
  Buf dh = alloc(key.bytes(es), es, 0xff), dl = alloc(key.bytes(es), es, 0xff);
  Buf dw = alloc(weight.bytes(es), es, 0xff), db = alloc(bias.bytes(es), es, 0xff);
  Buf ws = alloc(creff_backward_workspace_bytes(p, type == ElemType::Float64), 8, 0xff);
  dispatch(type, [&](auto tag) {
    using T = decltype(tag);
    check(creff_backward<T>(p, in<T>(g), in<T>(f), in<T>(m), in<T>(l), in<T>(w), in<T>(b), out<T>(dh), out<T>(dl),
                            out<T>(dw), out<T>(db), ws.ptr, nullptr),
          g_kernel);
  });
  store(outs.at(0), dh, key, es, false);
  store(outs.at(1), dl, key, es, false);
  store(outs.at(2), dw, weight, es, false);
  store(outs.at(3), db, bias, es, false);
}

void run_creff(ElemType type, bool experimental, bool nhwc) {
  const CreffParams p = creff_params();
  if (!creff_runs_fused(experimental, type, p)) {
    g_kernel = "composed";
    return;
  }
  // key, lr and out in the output's layout (the glue's creff_output_channels_last), the rest contiguous.
  g_kernel = "creff_forward";
  g_kernel_nhwc = nhwc;
  const size_t es = elem_size(type);
  const Tensor4 key{p.N, p.C, p.H, p.W}, motion{p.N, 2, p.Hb, p.Wb}, lr{p.N, p.C, p.h, p.w};
  const Tensor4 weight{3, p.C, 3, 3}, bias{1, 1, 3, p.C};
  const std::vector<std::string> ins = split(arg("in")), outs = split(arg("out"));
  Buf f = load(ins.at(0), key, es, nhwc), m = load(ins.at(1), motion, es, false), l = load(ins.at(2), lr, es, nhwc);
  Buf w = load(ins.at(3), weight, es, false), b = load(ins.at(4), bias, es, false);
  Buf o = alloc(key.bytes(es), es, 0xff);
  dispatch(type, [&](auto tag) {
    using T = decltype(tag);
    check(creff_forward<T>(p, nhwc, in<T>(f), in<T>(m), in<T>(l), in<T>(w), in<T>(b), out<T>(o), nullptr),
          g_kernel);
  });
  store(outs.at(0), o, key, es, nhwc);
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const char* eq = strchr(argv[i], '=');
    if (!eq) usage(std::string("argument without '=': ") + argv[i]);
    g_args[std::string(argv[i], static_cast<size_t>(eq - argv[i]))] = eq + 1;
  }
  g_misalign = g_args.count("misalign") && arg("misalign") == "1";
  const std::string op = arg("op");
  const ElemType type = parse_dtype(arg("dtype"));
  const bool experimental = arg("experimental") == "1";
  const bool nhwc = arg("layout") == "nhwc";
  if (op == "mv_warp_forward" || op == "mv_warp_backward_feature" || op == "mv_warp_backward_mv")
    run_mv_warp(op, type, experimental, nhwc);
  else if (op == "local_attn_forward" || op == "local_attn_backward")
    run_local_attn(op, type, experimental, nhwc);
  else if (op == "creff_forward")
    run_creff(type, experimental, nhwc);
  else if (op == "creff_backward")
    run_creff_backward(type, experimental);
  else
    usage("unknown op " + op);
  fprintf(stderr, "EMU_RESULT kernel=%s layout=%s blocks=%ld errors=%d\n", g_kernel, g_kernel_nhwc ? "nhwc" : "nchw",
          emu::blocks_run(), emu::error_count());
  return emu::error_count() ? 3 : 0;
}
