//! Compression of query responses: a client sending `Accept-Encoding: zstd` or `gzip` gets the
//! body stream-compressed (zstd preferred, as in Arc). The body is compressed chunk by chunk as
//! it is produced, so a streamed result stays streamed.

use std::io::{self, Write};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use futures::{Stream, StreamExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentEncoding {
    Zstd,
    Gzip,
}

impl ContentEncoding {
    fn name(self) -> &'static str {
        match self {
            ContentEncoding::Zstd => "zstd",
            ContentEncoding::Gzip => "gzip",
        }
    }
}

/// The encoding to answer with: zstd if acceptable, else gzip, else none. A coding listed with
/// `q=0` is refused, as HTTP says.
pub fn negotiate(headers: &HeaderMap) -> Option<ContentEncoding> {
    let mut zstd = false;
    let mut gzip = false;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(|param| {
                param
                    .trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if refused {
                continue;
            }
            if coding.eq_ignore_ascii_case("zstd") {
                zstd = true;
            } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = true;
            }
        }
    }
    if zstd {
        Some(ContentEncoding::Zstd)
    } else if gzip {
        Some(ContentEncoding::Gzip)
    } else {
        None
    }
}

/// Middleware for the query routes: compresses successful responses the client can decode.
pub async fn compress_response(request: Request, next: Next) -> Response {
    let encoding = negotiate(request.headers());
    let response = next.run(request).await;
    let Some(encoding) = encoding else {
        return response;
    };
    if !response.status().is_success() || response.headers().contains_key(header::CONTENT_ENCODING)
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(encoding.name()),
    );
    parts
        .headers
        .append(header::VARY, HeaderValue::from_static("accept-encoding"));
    let compressed = compress_stream(body.into_data_stream(), encoding);
    Response::from_parts(parts, Body::from_stream(compressed))
}

enum Encoder {
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
}

impl Encoder {
    fn new(encoding: ContentEncoding) -> io::Result<Encoder> {
        Ok(match encoding {
            // Level 1 / fast: query results are large and the client waits on the CPU here.
            ContentEncoding::Zstd => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 1)?)
            }
            ContentEncoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::fast(),
            )),
        })
    }

    /// Compresses a chunk and returns the output produced so far.
    fn write(&mut self, chunk: &[u8]) -> io::Result<Bytes> {
        let out = match self {
            Encoder::Zstd(e) => {
                e.write_all(chunk)?;
                e.get_mut()
            }
            Encoder::Gzip(e) => {
                e.write_all(chunk)?;
                e.get_mut()
            }
        };
        Ok(Bytes::from(std::mem::take(out)))
    }

    fn finish(self) -> io::Result<Bytes> {
        let out = match self {
            Encoder::Zstd(e) => e.finish()?,
            Encoder::Gzip(e) => e.finish()?,
        };
        Ok(Bytes::from(out))
    }
}

/// Compresses each chunk on the blocking pool; empty outputs are skipped.
fn compress_stream(
    body: impl Stream<Item = Result<Bytes, axum::Error>> + Send + 'static,
    encoding: ContentEncoding,
) -> impl Stream<Item = io::Result<Bytes>> {
    let encoder = Encoder::new(encoding);
    futures::stream::unfold(
        (Box::pin(body), Some(encoder)),
        |(mut body, encoder)| async move {
            let encoder = match encoder? {
                Ok(encoder) => encoder,
                Err(err) => return Some((Err(err), (body, None))),
            };
            let (result, encoder) = match body.next().await {
                Some(Ok(chunk)) => {
                    let compressed = tokio::task::spawn_blocking(move || {
                        let mut encoder = encoder;
                        (encoder.write(&chunk), encoder)
                    })
                    .await;
                    match compressed {
                        Ok((Ok(bytes), encoder)) => (Ok(bytes), Some(encoder)),
                        Ok((Err(err), _)) => (Err(err), None),
                        Err(join) => (Err(io::Error::other(join)), None),
                    }
                }
                Some(Err(err)) => (Err(io::Error::other(err)), None),
                None => (encoder.finish(), None),
            };
            Some((result, (body, encoder.map(Ok))))
        },
    )
    .filter(|item| futures::future::ready(!matches!(item, Ok(bytes) if bytes.is_empty())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, value.parse().unwrap());
        headers
    }

    #[test]
    fn zstd_is_preferred_and_q_zero_refuses() {
        assert_eq!(negotiate(&HeaderMap::new()), None);
        assert_eq!(negotiate(&accept("identity")), None);
        assert_eq!(negotiate(&accept("gzip")), Some(ContentEncoding::Gzip));
        assert_eq!(
            negotiate(&accept("gzip, zstd")),
            Some(ContentEncoding::Zstd)
        );
        assert_eq!(
            negotiate(&accept("ZSTD;q=0.5")),
            Some(ContentEncoding::Zstd)
        );
        assert_eq!(
            negotiate(&accept("zstd;q=0, gzip")),
            Some(ContentEncoding::Gzip)
        );
        assert_eq!(negotiate(&accept("br, deflate")), None);
    }

    #[tokio::test]
    async fn streamed_chunks_decompress_to_the_input() {
        let chunks: Vec<Bytes> = (0..50)
            .map(|i| Bytes::from(format!("[{i},\"row {i}\"],").repeat(1000)))
            .collect();
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
        for encoding in [ContentEncoding::Zstd, ContentEncoding::Gzip] {
            let input = futures::stream::iter(chunks.clone().into_iter().map(Ok));
            let parts: Vec<Bytes> = compress_stream(input, encoding)
                .map(|r| r.unwrap())
                .collect()
                .await;
            let compressed: Vec<u8> = parts.iter().flat_map(|c| c.to_vec()).collect();
            assert!(compressed.len() < expected.len() / 10);
            let mut decoded = Vec::new();
            match encoding {
                ContentEncoding::Zstd => {
                    decoded = zstd::decode_all(compressed.as_slice()).unwrap();
                }
                ContentEncoding::Gzip => {
                    use std::io::Read;
                    flate2::read::GzDecoder::new(compressed.as_slice())
                        .read_to_end(&mut decoded)
                        .unwrap();
                }
            }
            assert_eq!(decoded, expected);
        }
    }
}
