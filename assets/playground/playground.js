// GraphiQL's bootstrap for session-server: a fetcher that posts JSON to this page's own URL
// with the browser's cookies (same origin only) and the headers typed in GraphiQL's headers
// editor, and an example document for newcomers. Served as a file of its own because the
// page's Content-Security-Policy allows no inline script.
(function () {
  'use strict';

  var EXAMPLE = [
    '# Welcome to session-server. Every file of this page comes from the server itself.',
    '#',
    '# Run the three operations below in order: press the run button (or Ctrl-Enter)',
    '# and pick the operation by name.',
    '#',
    '# 1. StartAnonymous creates an anonymous session. The server answers with its token',
    '#    in the `session-token` response header and sets the `session` cookie, which',
    '#    this page sends back on every request (credentials: same-origin).',
    '# 2. LogIn logs in (here as the default superadmin; change SUPERADMIN_PASSWORD in',
    '#    production). Login always issues a new token: the anonymous session\'s channel',
    '#    and order carry over, and the cookie now holds the new session.',
    '# 3. WhoAmI shows the session this browser now has, through the cookie.',
    '#',
    '# To call as another client, open "Headers" below and send a bearer token:',
    '#   { "Authorization": "Bearer <token>" }',
    '# A bearer token wins over the cookie.',
    '',
    'mutation StartAnonymous {',
    '  createAnonymousSession { id kind expiresAt }',
    '}',
    '',
    'mutation LogIn {',
    '  login(username: "superadmin", password: "superadmin") {',
    '    __typename',
    '    ... on AuthenticationSuccess { user { identifier } session { id kind expiresAt } }',
    '    ... on InvalidCredentialsError { message }',
    '    ... on NotVerifiedError { message }',
    '    ... on TooManyAttemptsError { message retryAfterSeconds }',
    '  }',
    '}',
    '',
    'query WhoAmI {',
    '  activeSession { id kind current user { identifier } createdAt lastActiveAt expiresAt }',
    '  me { identifier channels { channelCode permissions } }',
    '  activeChannel { code }',
    '}',
    ''
  ].join('\n');

  // The page is served at the GraphQL endpoint itself (GET with Accept: text/html).
  var endpoint = window.location.pathname;

  function fetcher(params, options) {
    var headers = {
      'content-type': 'application/json',
      accept: 'application/graphql-response+json, application/json'
    };
    var extra = (options && options.headers) || {};
    Object.keys(extra).forEach(function (name) { headers[name] = extra[name]; });
    return fetch(endpoint, {
      method: 'POST',
      credentials: 'same-origin',
      headers: headers,
      body: JSON.stringify(params)
    }).then(function (response) {
      return response.text().then(function (text) {
        try {
          return JSON.parse(text);
        } catch (e) {
          return { errors: [{ message: 'HTTP ' + response.status + ': ' + text }] };
        }
      });
    });
  }

  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(React.createElement(GraphiQL, {
    fetcher: fetcher,
    defaultQuery: EXAMPLE,
    isHeadersEditorEnabled: true,
    shouldPersistHeaders: false
  }));
})();
