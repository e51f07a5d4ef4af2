//! Who calls a buyer operation: a customer, by a verified `Authorization: Bearer` token, or
//! an anonymous shopper. The token is verified once, as the request is extracted, before
//! the handler runs and before any database work.

use poem::{
    Request, RequestBody, Response,
    http::{StatusCode, header},
};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions, SecurityScheme, auth::Bearer,
    registry::Registry,
};
use service::sales::CustomerId;

use super::{State, error::ErrorBody};

/// A customer token: a JWT issued by the shop's login, with the customer's id in `sub`.
/// Here to describe the scheme in the document; [`Caller`] reads the header itself.
#[allow(dead_code)]
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT")]
pub struct CustomerToken(Bearer);

/// The caller of a buyer operation; `None`: anonymous (no `Authorization` header). A
/// header that does not hold a valid customer token is refused with 401 `invalid_token`.
pub struct Caller(pub Option<CustomerId>);

impl Caller {
    /// The customer, if any.
    pub fn customer(&self) -> Option<&CustomerId> {
        self.0.as_ref()
    }
}

impl<'a> ApiExtractor<'a> for Caller {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <CustomerToken as ApiExtractor>::register(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        <CustomerToken as ApiExtractor>::security_schemes()
    }

    /// The token is optional: the document lists "no security" beside the scheme.
    fn has_security_fallback() -> bool {
        true
    }

    async fn from_request(
        req: &'a Request,
        _body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let Some(value) = req.headers().get(header::AUTHORIZATION) else {
            return Ok(Self(None));
        };
        let state = req.data::<State>().expect("the routes carry the state");
        verify_header(state, value)
            .map(|c| Self(Some(c)))
            .map_err(|why| {
                tracing::info!(reason = %why, "customer token refused");
                poem::Error::from_response(invalid_token(why))
            })
    }
}

/// The customer named by the `Authorization` header `value`, or why it is refused.
pub(crate) fn verify_header(
    state: &State,
    value: &header::HeaderValue,
) -> Result<CustomerId, String> {
    let tokens = state
        .customer_tokens
        .as_ref()
        .ok_or("customer tokens are not accepted here: no customer key is configured")?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or("the Authorization header must be `Bearer <token>`")?;
    tokens.verify(token)
}

/// 401 `invalid_token`, with the challenge RFC 6750 asks for.
pub(crate) fn invalid_token(message: String) -> Response {
    let body = ErrorBody {
        code: "invalid_token".into(),
        message,
    };
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header(header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)
        .content_type("application/json; charset=utf-8")
        .body(serde_json::to_string(&body).expect("serialisable"))
}
