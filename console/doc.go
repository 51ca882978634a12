// Package console is a web console for operators of a Mycelium bus: an
// http.Handler, mountable under a path of a service's own server (like
// asynqmon), that shows every topic's figures live and lets an operator act
// on them. It is a package of its own because it is the one part of the
// module that serves HTML: it is built only on package inspect (each figure
// is the one `bus-worker stats` prints) and embeds its assets, so a service
// that never mounts it pays nothing for it.
//
// Pages (docs/console.md): the overview (every topic's rate in and out,
// backlog, pending, oldest pending age, dead letters, workers, partitions,
// limits and priorities, with charts of the last minutes), a topic (groups,
// consumers with their last beat, pending by age, partitions, cache,
// limits, pause and resume), its dead letters (decoded; replay one, the
// selected or all; purge after a confirmation), find a message by entry id
// or correlation id, the workers, and Redis (mode, version, memory, CPU per
// node). Pages are rendered on the server and work without JavaScript; a
// small script keeps them live over server-sent events and draws the charts
// with uPlot (vendored from npm, see web/package.json and `make
// console-assets`). Nothing is fetched from elsewhere at run time.
//
// Security: a console is read-only unless its Config has a Token. Changes
// (replay, purge, pause, resume) then need a session opened with the token
// on the sign-in page, and the session's CSRF token in the form (or the
// token itself in an "Authorization: Bearer" header, for scripts). Every
// change is logged with who made it and what it touched. URLs are shown
// redacted, never with their passwords.
package console
