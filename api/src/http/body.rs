//! `JsonBody<T>`: a JSON request body read with a size limit and parsed on demand, so that
//! a handler can check a signature over the raw bytes first and every parse failure gets
//! our error body: 400 `invalid_json` for bad syntax, 422 `validation_error` naming the field.

use std::marker::PhantomData;

use poem::{Request, RequestBody, error::ReadBodyError};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions,
    registry::{MetaMediaType, MetaRequest, Registry},
    types::Type,
};
use serde::de::DeserializeOwned;

use super::error::{ApiError, Rejection};

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON body whose schema is `T`.
pub struct JsonBody<T> {
    raw: Vec<u8>,
    _schema: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> JsonBody<T> {
    /// The bytes exactly as received.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Parses the body; the error names the offending field.
    pub fn parse(&self) -> Result<T, ApiError> {
        parse_json(&self.raw)
    }
}

fn parse_json<T: DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    use serde_json::error::Category;
    // serde would read a struct from an array too (`[1, 2]`): every body is an object.
    if raw.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(raw) {
            Ok(_) => service::Error::validation("body", "must be a JSON object").into(),
            Err(e) => ApiError::invalid_json(format!("request body is not valid JSON: {e}")),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(raw);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            // A data error may come before a syntax error further on: syntax wins.
            Category::Data if serde_json::from_slice::<serde::de::IgnoredAny>(raw).is_err() => {
                ApiError::invalid_json("request body is not valid JSON")
            }
            Category::Data => {
                let field = if path == "." { "body".to_owned() } else { path };
                ApiError::from(service::Error::validation(field, strip_position(&inner)))
            }
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::invalid_json(format!("request body is not valid JSON: {inner}"))
            }
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid_json(format!("request body is not valid JSON: {e}")))?;
    Ok(value)
}

/// serde_json's message without its " at line L column C" suffix.
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

impl<'a, T: Type + DeserializeOwned> ApiExtractor<'a> for JsonBody<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: "application/json",
                schema: T::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        _request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        // The API speaks only JSON, so the body is read as JSON whatever Content-Type says:
        // `curl -d '{…}'` (which sends a form type) just works.
        let raw = body
            .take()?
            .into_bytes_limit(MAX_BODY_BYTES)
            .await
            .map_err(|e| match e {
                ReadBodyError::PayloadTooLarge => Rejection(ApiError::payload_too_large()),
                other => Rejection(ApiError::invalid_json(format!("cannot read body: {other}"))),
            })?;
        Ok(Self {
            raw: raw.to_vec(),
            _schema: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        product_id: i64,
        qty: i64,
    }

    fn code_and_message(e: ApiError) -> (String, String) {
        match e {
            ApiError::BadRequest(b) | ApiError::Unprocessable(b) => (b.0.code, b.0.message),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_syntax_is_invalid_json() {
        for raw in ["", "{", "{\"qty\": }", "nul", "{} x"] {
            let (code, _) = code_and_message(parse_json::<Req>(raw.as_bytes()).unwrap_err());
            assert_eq!(code, "invalid_json", "{raw:?}");
        }
    }

    #[test]
    fn wrong_type_names_the_field() {
        let (code, message) =
            code_and_message(parse_json::<Req>(br#"{"product_id": 1, "qty": "2"}"#).unwrap_err());
        assert_eq!(code, "validation_error");
        assert!(message.starts_with("qty:"), "{message}");
    }

    #[test]
    fn missing_and_unknown_fields_are_named() {
        let (_, message) = code_and_message(parse_json::<Req>(br#"{"qty": 2}"#).unwrap_err());
        assert!(message.contains("product_id"), "{message}");
        let (_, message) = code_and_message(
            parse_json::<Req>(br#"{"product_id": 1, "qty": 2, "qtty": 3}"#).unwrap_err(),
        );
        assert!(message.contains("qtty"), "{message}");
    }

    #[test]
    fn only_objects_are_accepted() {
        for raw in ["[1, 2]", "42", "\"x\"", "null"] {
            let (code, message) = code_and_message(parse_json::<Req>(raw.as_bytes()).unwrap_err());
            assert_eq!(code, "validation_error", "{raw}");
            assert!(message.starts_with("body:"), "{message}");
        }
        let (code, _) = code_and_message(parse_json::<Req>(b"[1,").unwrap_err());
        assert_eq!(code, "invalid_json");
    }

    #[test]
    fn huge_numbers_are_rejected() {
        let err = parse_json::<Req>(br#"{"product_id": 1, "qty": 99999999999999999999}"#);
        assert!(err.is_err());
    }
}
