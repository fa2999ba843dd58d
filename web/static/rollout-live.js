// A running rollout's page follows it live: polls /rollouts/<id>/state (JSON) and updates
// the rollout's state, each batch's status line and what it waits for, and each agent's
// state, how it is reached and since when it owes a result — in place, no reload. Stops when
// the rollout no longer runs. The page works without this file (<noscript> meta refresh);
// CSP forbids inline scripts, hence a file.
(function () {
  "use strict";
  var RETRY_MS = 10000;  // after a failed poll (hub restarting, network)
  var heading = document.getElementById("rollout-heading");
  if (!heading || heading.dataset.running !== "1") {
    return;
  }
  var url = heading.dataset.stateUrl;
  var pollMs = parseInt(heading.dataset.pollMs || "2000", 10);
  var status = document.getElementById("rollout-live-status");

  function say(text) {
    if (status) {
      status.hidden = false;
      status.textContent = text;
    }
  }

  function badge(cell, state, href) {
    var span = document.createElement("span");
    span.className = "badge badge-" + state.replace(/ /g, "-");
    span.textContent = state;
    var node = span;
    if (href) {
      node = document.createElement("a");
      node.href = href;
      node.appendChild(span);
    }
    while (cell.firstChild) {
      cell.removeChild(cell.firstChild);
    }
    cell.appendChild(node);
  }

  function setText(node, text) {
    if (node && node.textContent !== text) {
      node.textContent = text;
    }
  }

  function apply(data) {
    var top = document.getElementById("rollout-state");
    if (top && top.textContent !== data.state) {
      top.textContent = data.state;
      top.className = "badge badge-" + data.state;
    }
    data.batches.forEach(function (b) {
      var section = document.getElementById("batch-" + b.number);
      if (!section) {
        return;
      }
      setText(section.querySelector(".batch-current"),
              b.number === data.current_batch ? " (current)" : "");
      setText(section.querySelector(".batch-status"), b.status);
      var list = document.getElementById("batch-" + b.number + "-waiting");
      if (list) {
        while (list.firstChild) {
          list.removeChild(list.firstChild);
        }
        b.waiting_for.forEach(function (w) {
          var li = document.createElement("li");
          li.textContent = w;
          list.appendChild(li);
        });
        list.hidden = b.waiting_for.length === 0;
      }
      b.agents.forEach(function (a) {
        var row = null;
        section.querySelectorAll("tr[data-agent]").forEach(function (tr) {
          if (tr.dataset.agent === a.agent) {
            row = tr;
          }
        });
        if (!row) {
          return;
        }
        var cell = row.querySelector(".agent-state");
        if (cell && cell.textContent.trim() !== a.state) {
          badge(cell, a.state, a.deployment_url);
        }
        setText(row.querySelector(".agent-reached"), a.reached);
        setText(row.querySelector(".agent-owes"), a.owes_result_since || "\u2013");
      });
    });
  }

  function poll() {
    fetch(url, {
      credentials: "same-origin",
      headers: { "Accept": "application/json" }
    }).then(function (resp) {
      var type = resp.headers.get("Content-Type") || "";
      if (!resp.ok || type.indexOf("application/json") !== 0) {
        say("Live updates stopped: the session may have ended. Reload the page.");
        return null;
      }
      return resp.json();
    }).then(function (data) {
      if (data === null) {
        return;
      }
      apply(data);
      if (data.running) {
        window.setTimeout(poll, pollMs);
      } else {
        say("The rollout is " + data.state + "; reload the page for its actions.");
      }
    }).catch(function () {
      say("Live updates: the hub did not answer; trying again.");
      window.setTimeout(poll, RETRY_MS);
    });
  }

  window.setTimeout(poll, pollMs);
}());
