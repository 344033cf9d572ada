//! Image pre-processing: encoded JPEG/PNG bytes → a model's input tensor.

use serde::{Deserialize, Serialize};

use crate::{InferenceError, Tensor, TensorData};

/// How an image becomes a tensor, as a component's configuration spells it (camelCase keys,
/// every key optional):
/// `{"width": 224, "height": 224, "resize": "centerCrop", "channelOrder": "rgb",
///   "layout": "nchw", "scale": 0.00392157, "mean": [0.485, 0.456, 0.406],
///   "std": [0.229, 0.224, 0.225]}`.
///
/// Each f32 value is `(pixel * scale - mean[c]) / std[c]`, pixel in 0..=255 and `c` the
/// channel's position in the output (so with `"bgr"`, `mean[0]` is blue's). With
/// `"dtype": "u8"` the raw pixels are returned and scale/mean/std are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Preprocess {
    pub width: u32,
    pub height: u32,
    pub resize: ResizeMode,
    pub channel_order: ChannelOrder,
    pub layout: Layout,
    pub dtype: PixelType,
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Whether the tensor gets a leading batch dimension of 1 (`[1, 3, H, W]`).
    pub batch: bool,
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            width: 224,
            height: 224,
            resize: ResizeMode::Stretch,
            channel_order: ChannelOrder::Rgb,
            layout: Layout::Nchw,
            dtype: PixelType::F32,
            scale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            batch: true,
        }
    }
}

/// How the image is brought to `width` × `height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum ResizeMode {
    /// Scaled to exactly the size, aspect ratio not kept.
    #[default]
    Stretch,
    /// Scaled so that it covers the size, then the centre cut out.
    CenterCrop,
    /// Scaled to fit inside the size, aspect ratio kept, the rest black (top-left aligned).
    Letterbox,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    #[default]
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[N, C, H, W]` (PyTorch, ONNX exports).
    #[default]
    Nchw,
    /// `[N, H, W, C]` (TensorFlow, TFLite).
    Nhwc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PixelType {
    #[default]
    F32,
    U8,
}

/// Decodes `encoded` (JPEG or PNG), resizes and normalises it as `p` says.
pub fn preprocess(encoded: &[u8], p: &Preprocess) -> Result<Tensor, InferenceError> {
    if p.width == 0 || p.height == 0 {
        return Err(InferenceError::Input(format!(
            "image pre-processing needs a width and height above 0 (got {}x{})",
            p.width, p.height
        )));
    }
    if p.std.contains(&0.0) {
        return Err(InferenceError::Input(
            "image pre-processing std must not contain 0".into(),
        ));
    }
    let decoded = image::load_from_memory(encoded).map_err(|e| {
        InferenceError::Input(format!(
            "cannot decode the image (JPEG and PNG are supported): {e}"
        ))
    })?;
    let rgb = resize(decoded, p).to_rgb8();
    let (w, h) = (p.width as usize, p.height as usize);
    let order: [usize; 3] = match p.channel_order {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    // Index of (channel c, row y, column x) in the output.
    let index = |c: usize, y: usize, x: usize| match p.layout {
        Layout::Nchw => (c * h + y) * w + x,
        Layout::Nhwc => (y * w + x) * 3 + c,
    };
    let mut shape = match p.layout {
        Layout::Nchw => vec![3, h, w],
        Layout::Nhwc => vec![h, w, 3],
    };
    if p.batch {
        shape.insert(0, 1);
    }
    let data = match p.dtype {
        PixelType::U8 => {
            let mut out = vec![0u8; 3 * w * h];
            for (x, y, px) in rgb.enumerate_pixels() {
                for (c, &src) in order.iter().enumerate() {
                    out[index(c, y as usize, x as usize)] = px.0[src];
                }
            }
            TensorData::U8(out)
        }
        PixelType::F32 => {
            let mut out = vec![0f32; 3 * w * h];
            for (x, y, px) in rgb.enumerate_pixels() {
                for (c, &src) in order.iter().enumerate() {
                    let v = (f32::from(px.0[src]) * p.scale - p.mean[c]) / p.std[c];
                    out[index(c, y as usize, x as usize)] = v;
                }
            }
            TensorData::F32(out)
        }
    };
    Ok(Tensor { shape, data })
}

fn resize(img: image::DynamicImage, p: &Preprocess) -> image::DynamicImage {
    use image::imageops::FilterType::Triangle;
    let (w, h) = (p.width, p.height);
    if img.width() == w && img.height() == h {
        return img;
    }
    match p.resize {
        ResizeMode::Stretch => img.resize_exact(w, h, Triangle),
        ResizeMode::CenterCrop => img.resize_to_fill(w, h, Triangle),
        ResizeMode::Letterbox => {
            let fitted = img.resize(w, h, Triangle).to_rgb8();
            let mut canvas = image::RgbImage::new(w, h);
            image::imageops::replace(&mut canvas, &fitted, 0, 0);
            image::DynamicImage::ImageRgb8(canvas)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4×2 PNG: left half red, right half blue.
    fn png() -> Vec<u8> {
        let img = image::RgbImage::from_fn(4, 2, |x, _| {
            if x < 2 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn nchw_rgb_scaled() {
        let p = Preprocess {
            width: 4,
            height: 2,
            ..Default::default()
        };
        let t = preprocess(&png(), &p).unwrap();
        assert_eq!(t.shape, vec![1, 3, 2, 4]);
        let TensorData::F32(v) = t.data else { panic!() };
        // Red plane: 1 1 0 0 on both rows; blue plane: 0 0 1 1.
        assert_eq!(&v[0..4], &[1.0, 1.0, 0.0, 0.0]);
        assert_eq!(&v[8..12], &[0.0; 4]);
        assert_eq!(&v[16..20], &[0.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn nhwc_bgr_u8_without_batch() {
        let p = Preprocess {
            width: 4,
            height: 2,
            channel_order: ChannelOrder::Bgr,
            layout: Layout::Nhwc,
            dtype: PixelType::U8,
            batch: false,
            ..Default::default()
        };
        let t = preprocess(&png(), &p).unwrap();
        assert_eq!(t.shape, vec![2, 4, 3]);
        let TensorData::U8(v) = t.data else { panic!() };
        assert_eq!(&v[0..3], &[0, 0, 255]); // red pixel, BGR
        assert_eq!(&v[9..12], &[255, 0, 0]); // blue pixel, BGR
    }

    #[test]
    fn mean_std_and_resize() {
        let p = Preprocess {
            width: 2,
            height: 2,
            resize: ResizeMode::CenterCrop,
            mean: [0.5, 0.5, 0.5],
            std: [0.5, 0.5, 0.5],
            ..Default::default()
        };
        let t = preprocess(&png(), &p).unwrap();
        assert_eq!(t.shape, vec![1, 3, 2, 2]);
        let TensorData::F32(v) = t.data else { panic!() };
        assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)), "{v:?}");
        let p = Preprocess {
            width: 8,
            height: 8,
            resize: ResizeMode::Letterbox,
            ..Default::default()
        };
        let t = preprocess(&png(), &p).unwrap();
        let TensorData::F32(v) = t.data else { panic!() };
        // 4x2 fitted into 8x8 is 8x4: the bottom half is padding.
        assert!(v[32..64].iter().all(|x| *x == 0.0));
    }

    #[test]
    fn garbage_and_bad_config_are_input_errors() {
        let e = preprocess(b"not an image", &Preprocess::default()).unwrap_err();
        assert!(e.to_string().contains("cannot decode the image"), "{e}");
        let p = Preprocess {
            width: 0,
            ..Default::default()
        };
        assert!(matches!(
            preprocess(&png(), &p),
            Err(InferenceError::Input(_))
        ));
    }

    #[test]
    fn config_deserializes_camel_case() {
        let p: Preprocess = serde_json::from_str(
            r#"{"width": 192, "height": 48, "channelOrder": "bgr", "resize": "centerCrop", "layout": "nhwc"}"#,
        )
        .unwrap();
        assert_eq!(p.channel_order, ChannelOrder::Bgr);
        assert_eq!(p.resize, ResizeMode::CenterCrop);
        assert_eq!(p.layout, Layout::Nhwc);
        assert_eq!(p.scale, 1.0 / 255.0);
        assert!(serde_json::from_str::<Preprocess>(r#"{"widht": 3}"#).is_err());
    }
}
