// Fused CPU kernels for the views' costliest ops: resized crop, colour jitter, grayscale and Gaussian blur.
//
// The PyTorch versions in ops.py make one pass over the whole chunk per elementwise step (the hue rotation alone
// is about 40), so at 96 px they are bound by memory traffic. Here each image goes through all the steps of an op
// while it sits in cache, and the images are split between threads. The random parameters are drawn in Python
// exactly as before (same generator calls, same order): these functions only compute, and give the PyTorch ops'
// results up to float rounding (tests/test_views_kernels.py compares the two on the same parameters).
//
// Built on first use by selfsup/views/kernels.py with the C++ compiler torch.utils.cpp_extension finds.

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

namespace {

constexpr float L0 = 0.299f, L1 = 0.587f, L2 = 0.114f;  // ITU-R BT.601 luma, as ops.LUMA

// fn(first, last) over [0, n) on up to torch's intra-op thread count, in contiguous ranges; serial when the
// work is small (spawning threads costs tens of microseconds).
template <typename F>
void parallel(int64_t n, int64_t work_per_item, F fn) {
  int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
  if (threads <= 1 || n * work_per_item < (1 << 15)) {
    fn(0, n);
    return;
  }
  std::vector<std::thread> pool;
  int64_t per = (n + threads - 1) / threads;
  for (int64_t t = 1; t < threads; ++t) {
    int64_t a = t * per, b = std::min(n, a + per);
    if (a < b) pool.emplace_back(fn, a, b);
  }
  fn(0, std::min(n, per));
  for (auto& th : pool) th.join();
}

inline float clamp01(float v) { return std::min(std::max(v, 0.0f), 1.0f); }

void check_images(const torch::Tensor& x, const char* what) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 4 && x.is_contiguous(),
              what, ": expects a contiguous float32 (B, C, H, W) CPU tensor");
}

// ------------------------------------------------------------------------------------------ resized crop

// One value of the source as a float in [0, 1] the way the PyTorch path gets it: floats as they are, uint8 as
// u / 255 (a table of the 256 quotients, so the same float division as `images.float() / 255`).
struct FromFloat {
  const float* p;
  float operator()(int64_t i) const { return p[i]; }
};
struct FromByte {
  const uint8_t* p;
  const float* table;
  float operator()(int64_t i) const { return table[p[i]]; }
};

// out (B, C, oh, ow) = each sample's box (top, left, height, width) of x resized bilinearly, with the arithmetic of
// ops.resized_crop (pixel centres, clamp to the box, grid_sample's align_corners=False round trip and border
// clamp); flip (B,) uint8 mirrors a sample's sampling columns. x: float32, or uint8 read as u / 255.
template <typename Src>
void crop_into(Src src, int64_t B, int64_t C, int64_t H, int64_t W, const float* bx, const uint8_t* fl, float* dst,
               int64_t oh, int64_t ow) {
  parallel(B, C * oh * ow, [&](int64_t first, int64_t last) {
    std::vector<int64_t> x0(ow), x1(ow), y0(oh), y1(oh);
    std::vector<float> wx(ow), wy(oh);
    std::vector<float> rows;  // horizontally resampled input rows (rows, ow) of one channel
    auto axis = [](float start, float length, int64_t n_out, int64_t n_in, int64_t* i0, int64_t* i1, float* w) {
      for (int64_t j = 0; j < n_out; ++j) {
        float centre = (static_cast<float>(j) + 0.5f) / static_cast<float>(n_out);
        float pix = start + centre * length - 0.5f;
        pix = std::min(std::max(pix, start), start + length - 1.0f);
        float g = (2.0f * pix + 1.0f) / static_cast<float>(n_in) - 1.0f;       // normalized, as ops.py
        float at = ((g + 1.0f) * static_cast<float>(n_in) - 1.0f) / 2.0f;      // grid_sample's unnormalize
        at = std::min(std::max(at, 0.0f), static_cast<float>(n_in - 1));       // padding_mode="border"
        int64_t a = static_cast<int64_t>(std::floor(at));
        i0[j] = a;
        i1[j] = std::min(a + 1, n_in - 1);  // weight 0 when a is the last pixel
        w[j] = at - static_cast<float>(a);
      }
    };
    for (int64_t b = first; b < last; ++b) {
      const float* box = bx + 4 * b;
      axis(box[1], box[3], ow, W, x0.data(), x1.data(), wx.data());
      axis(box[0], box[2], oh, H, y0.data(), y1.data(), wy.data());
      if (fl && fl[b]) {
        std::reverse(x0.begin(), x0.end());
        std::reverse(x1.begin(), x1.end());
        std::reverse(wx.begin(), wx.end());
      }
      const int64_t r0 = y0[0], r1 = y1[oh - 1];  // the input rows any output row reads
      const int64_t nrows = r1 - r0 + 1;
      rows.resize(nrows * ow);
      for (int64_t c = 0; c < C; ++c) {
        const int64_t plane = (b * C + c) * H * W;
        for (int64_t r = 0; r < nrows; ++r) {
          const int64_t in = plane + (r0 + r) * W;
          float* o = rows.data() + r * ow;
          for (int64_t j = 0; j < ow; ++j) {
            const float a = src(in + x0[j]);
            o[j] = a + wx[j] * (src(in + x1[j]) - a);
          }
        }
        float* op = dst + (b * C + c) * oh * ow;
        for (int64_t i = 0; i < oh; ++i) {
          const float* __restrict a = rows.data() + (y0[i] - r0) * ow;
          const float* __restrict d = rows.data() + (y1[i] - r0) * ow;
          float* __restrict o = op + i * ow;
          const float w = wy[i];
          for (int64_t j = 0; j < ow; ++j) o[j] = a[j] + w * (d[j] - a[j]);
        }
      }
    }
  });
}

void resized_crop_into(torch::Tensor x, torch::Tensor boxes, torch::Tensor out, torch::Tensor flip) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.is_contiguous() &&
                  (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kUInt8),
              "resized_crop_into: expects a contiguous float32 or uint8 (B, C, H, W) CPU tensor");
  check_images(out, "resized_crop_into (out)");
  boxes = boxes.to(torch::kFloat32).contiguous();
  flip = flip.to(torch::kUInt8).contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(out.size(0) == B && out.size(1) == C, "resized_crop_into: out must be (B, C, oh, ow)");
  TORCH_CHECK(boxes.size(0) == B && boxes.size(1) == 4, "resized_crop_into: boxes must be (B, 4)");
  TORCH_CHECK(flip.numel() == 0 || flip.numel() == B, "resized_crop_into: flip must be empty or (B,)");
  const float* bx = boxes.data_ptr<float>();
  const uint8_t* fl = flip.numel() ? flip.data_ptr<uint8_t>() : nullptr;
  float* dst = out.data_ptr<float>();
  const int64_t oh = out.size(2), ow = out.size(3);
  if (x.scalar_type() == torch::kUInt8) {
    float table[256];
    for (int v = 0; v < 256; ++v) table[v] = static_cast<float>(v) / 255.0f;
    crop_into(FromByte{x.data_ptr<uint8_t>(), table}, B, C, H, W, bx, fl, dst, oh, ow);
  } else {
    crop_into(FromFloat{x.data_ptr<float>()}, B, C, H, W, bx, fl, dst, oh, ow);
  }
}

// ------------------------------------------------------------------------------------------ colour jitter

// The hue rotation of ops._hue_into, one pixel at a time: the max and min stay, the hue moves by `shift` turns.
void hue_plane(float* __restrict r, float* __restrict g, float* __restrict b, int64_t n, float shift) {
  const float n_r = shift + (5.0f / 6.0f + 1.0f), n_g = shift + (3.0f / 6.0f + 1.0f), n_b = shift + (1.0f / 6.0f + 1.0f);
  for (int64_t i = 0; i < n; ++i) {
    const float R = r[i], G = g[i], Bl = b[i];
    const float maxc = std::max(std::max(R, G), Bl), minc = std::min(std::min(R, G), Bl);
    const float delta = maxc - minc;
    // Hue times delta in sixths of a turn, from the max channel; ties break red first, then green.
    const float num_g = (Bl - R) + 2.0f * delta, num_b = (R - G) + 4.0f * delta, num_r = G - Bl;
    float num = (G == maxc) ? num_g : num_b;
    num = (R == maxc) ? num_r : num;
    const float delta6 = 6.0f * delta;
    const float hue = num / std::max(delta6, 1e-12f);
    const float low = minc - delta;
    float ur = hue + n_r, ug = hue + n_g, ub = hue + n_b;
    ur = std::fabs((ur - std::trunc(ur)) - 1.0f / 3.0f);
    ug = std::fabs((ug - std::trunc(ug)) - 1.0f / 3.0f);
    ub = std::fabs((ub - std::trunc(ub)) - 1.0f / 3.0f);
    r[i] = std::min(std::max(low + delta6 * ur, minc), maxc);
    g[i] = std::min(std::max(low + delta6 * ug, minc), maxc);
    b[i] = std::min(std::max(low + delta6 * ub, minc), maxc);
  }
}

// In place: brightness, contrast, saturation, hue of each sample in its own order, as ops.jitter.
// factors (B, 4): brightness, contrast, saturation factors and the hue shift; order (B, 4) int64 permutations of
// 0..3. Factors of 1 (hue 0) are skipped, which is exact: the PyTorch version computes them as no-ops.
void jitter_(torch::Tensor x, torch::Tensor factors, torch::Tensor order) {
  check_images(x, "jitter_");
  factors = factors.to(torch::kFloat32).contiguous();
  order = order.to(torch::kInt64).contiguous();
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  TORCH_CHECK(C == 1 || C == 3, "jitter_: 1 or 3 channels");
  TORCH_CHECK(factors.size(0) == B && factors.size(1) == 4 && order.size(0) == B && order.size(1) == 4,
              "jitter_: factors and order must be (B, 4)");
  float* data = x.data_ptr<float>();
  const float* fac = factors.data_ptr<float>();
  const int64_t* ord = order.data_ptr<int64_t>();

  parallel(B, C * P, [&](int64_t first, int64_t last) {
    std::vector<float> luma(P);
    for (int64_t s = first; s < last; ++s) {
      float* img = data + s * C * P;
      float* __restrict r = img;
      float* __restrict g = img + P;
      float* __restrict bl = img + 2 * P;
      for (int k = 0; k < 4; ++k) {
        int64_t op = ord[4 * s + k];
        if (op == 3 || (op == 2 && C == 1)) {  // hue; saturation means nothing on one channel
          const float shift = fac[4 * s + 3];
          if (op == 3 && C == 3 && shift != 0.0f) hue_plane(r, g, bl, P, shift);
          continue;
        }
        const float f = fac[4 * s + op];
        if (f == 1.0f) continue;
        const float keep = 1.0f - f;
        if (op == 0) {  // brightness: f x
          for (int64_t i = 0; i < C * P; ++i) img[i] = clamp01(img[i] * f);
        } else if (op == 1) {  // contrast: f x + (1 - f) mean luma
          double sum = 0.0;
          for (int64_t a = 0; a < P; a += 256) {  // float sums of 256 values, four lanes, added up in double
            const int64_t e = std::min(P, a + 256);
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
            int64_t i = a;
            if (C == 3) {
              for (; i + 4 <= e; i += 4) {
                s0 += r[i] * L0 + g[i] * L1 + bl[i] * L2;
                s1 += r[i + 1] * L0 + g[i + 1] * L1 + bl[i + 1] * L2;
                s2 += r[i + 2] * L0 + g[i + 2] * L1 + bl[i + 2] * L2;
                s3 += r[i + 3] * L0 + g[i + 3] * L1 + bl[i + 3] * L2;
              }
              for (; i < e; ++i) s0 += r[i] * L0 + g[i] * L1 + bl[i] * L2;
            } else {
              for (; i + 4 <= e; i += 4) {
                s0 += img[i];
                s1 += img[i + 1];
                s2 += img[i + 2];
                s3 += img[i + 3];
              }
              for (; i < e; ++i) s0 += img[i];
            }
            sum += static_cast<double>((s0 + s1) + (s2 + s3));
          }
          const float beta = keep * static_cast<float>(sum / static_cast<double>(P));
          for (int64_t i = 0; i < C * P; ++i) img[i] = clamp01(beta + img[i] * f);
        } else {  // saturation: f x + (1 - f) luma
          float* __restrict l = luma.data();
          for (int64_t i = 0; i < P; ++i) l[i] = (r[i] * L0 + g[i] * L1 + bl[i] * L2) * keep;
          for (int64_t c = 0; c < 3; ++c) {
            float* __restrict p = img + c * P;
            for (int64_t i = 0; i < P; ++i) p[i] = clamp01(l[i] + p[i] * f);
          }
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------ grayscale

// In place on the 3-channel samples where apply is set: every channel becomes the luma (ops.random_grayscale).
void gray_(torch::Tensor x, torch::Tensor apply) {
  check_images(x, "gray_");
  apply = apply.to(torch::kUInt8).contiguous();
  const int64_t B = x.size(0), P = x.size(2) * x.size(3);
  TORCH_CHECK(x.size(1) == 3 && apply.numel() == B, "gray_: 3 channels, apply (B,)");
  float* data = x.data_ptr<float>();
  const uint8_t* on = apply.data_ptr<uint8_t>();
  parallel(B, 3 * P, [&](int64_t first, int64_t last) {
    for (int64_t s = first; s < last; ++s) {
      if (!on[s]) continue;
      float* __restrict r = data + s * 3 * P;
      float* __restrict g = r + P;
      float* __restrict b = r + 2 * P;
      for (int64_t i = 0; i < P; ++i) {
        const float l = r[i] * L0 + g[i] * L1 + b[i] * L2;
        r[i] = l;
        g[i] = l;
        b[i] = l;
      }
    }
  });
}

// --------------------------------------------------------------------------------------------------- blur

// In place on the samples where apply is set: Gaussian blur of odd size k with the sample's sigma, reflect
// padding, horizontal then vertical pass (ops.blur's kernel and padding).
void blur_(torch::Tensor x, torch::Tensor sigma, torch::Tensor apply, int64_t k) {
  check_images(x, "blur_");
  sigma = sigma.to(torch::kFloat32).contiguous();
  apply = apply.to(torch::kUInt8).contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(k % 2 == 1 && k / 2 < std::min(H, W), "blur_: odd kernel, k / 2 < side");
  TORCH_CHECK(sigma.numel() == B && apply.numel() == B, "blur_: sigma and apply must be (B,)");
  const int64_t pad = k / 2;
  float* data = x.data_ptr<float>();
  const float* sg = sigma.data_ptr<float>();
  const uint8_t* on = apply.data_ptr<uint8_t>();
  auto reflect = [](int64_t i, int64_t n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); };

  parallel(B, C * H * W * k, [&](int64_t first, int64_t last) {
    std::vector<float> w(k), row(W + 2 * pad), tmp(H * W);
    for (int64_t s = first; s < last; ++s) {
      if (!on[s]) continue;
      // softmax(-t^2 / 2 sigma^2): the normalized Gaussian, as ops.blur computes it
      float top = -INFINITY, total = 0.0f;
      for (int64_t t = 0; t < k; ++t) {
        float z = (static_cast<float>(t) - static_cast<float>(k - 1) / 2.0f) / sg[s];
        w[t] = -0.5f * (z * z);
        top = std::max(top, w[t]);
      }
      for (int64_t t = 0; t < k; ++t) total += (w[t] = std::exp(w[t] - top));
      for (int64_t t = 0; t < k; ++t) w[t] /= total;
      for (int64_t c = 0; c < C; ++c) {
        float* plane = data + (s * C + c) * H * W;
        for (int64_t i = 0; i < H; ++i) {  // horizontal, into tmp
          const float* in = plane + i * W;
          for (int64_t j = -pad; j < W + pad; ++j) row[j + pad] = in[reflect(j, W)];
          float* __restrict o = tmp.data() + i * W;
          const float* __restrict rw = row.data();
          for (int64_t j = 0; j < W; ++j) o[j] = 0.0f;
          for (int64_t t = 0; t < k; ++t) {
            const float wt = w[t];
            for (int64_t j = 0; j < W; ++j) o[j] += wt * rw[j + t];
          }
        }
        for (int64_t i = 0; i < H; ++i) {  // vertical, back into the plane
          float* __restrict o = plane + i * W;
          for (int64_t j = 0; j < W; ++j) o[j] = 0.0f;
          for (int64_t t = 0; t < k; ++t) {
            const float* __restrict in = tmp.data() + reflect(i - pad + t, H) * W;
            const float wt = w[t];
            for (int64_t j = 0; j < W; ++j) o[j] += wt * in[j];
          }
        }
      }
    }
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "selfsup's fused CPU kernels for views (resized crop, colour jitter, grayscale, Gaussian blur)";
  m.def("resized_crop_into", &resized_crop_into, "bilinear resized crop of per-sample boxes into out, optional mirror");
  m.def("gray_", &gray_, "in-place grayscale of the samples where apply is set");
  m.def("jitter_", &jitter_, "in-place colour jitter in a per-sample order");
  m.def("blur_", &blur_, "in-place Gaussian blur of the samples where apply is set");
}
