/**
 * An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}` with the HTTP status
 * the official clients map to their error classes (400 BadRequest, 401 Authentication, 404 NotFound,
 * 413, 429 RateLimit, 500/503 InternalServer).
 */
export class ApiError extends Error {
  constructor(
    readonly status: 400 | 401 | 404 | 413 | 429 | 500 | 503,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'ApiError';
  }

  get type(): string {
    switch (this.status) {
      case 401:
        return 'authentication_error';
      case 404:
        return 'not_found_error';
      case 429:
        return 'rate_limit_error';
      case 500:
      case 503:
        return 'server_error';
      default:
        return 'invalid_request_error';
    }
  }

  toJSON(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

export function badRequest(message: string, param: string | null = null, code: string | null = null): ApiError {
  return new ApiError(400, message, param, code);
}
