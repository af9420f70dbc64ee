/*
 * The rule form's condition builder (rules_admin/condition_widget.py): rows of field / operator / value over the
 * condition's JSON box, for a rule's items or (data-mode="audience") its audience. The box is what the form submits; the rows write it as they change (one row: a condition,
 * several: a list, all must hold; an incomplete row is left out), and "Edit as JSON" shows the box itself. A box the
 * rows cannot show (another field or operator, a value of another type) stays in JSON, with the reason.
 *
 * Values are suggested from the catalog as one types; "matches N of M items" and the values no item has (with the
 * catalog's spelling when only the case differs) follow every change. Loaded as a static file: the console's
 * Content-Security-Policy runs no inline script.
 *
 * An audience (which users: conditions on `traits.<name>`) has rows of trait name (suggested from users' traits),
 * kind of value (from the trait's values, or chosen: a trait nobody has yet has no kind), operator and value; in
 * place of the item count, a sentence saying who the rule applies to.
 */
(function () {
  "use strict";

  var OPERATORS = {
    text: [["eq", "is"], ["ne", "is not"], ["in", "is one of"], ["contains", "contains"]],
    number: [["eq", "is"], ["ne", "is not"], ["lt", "is under"], ["lte", "is at most"], ["gt", "is over"],
             ["gte", "is at least"]],
    boolean: [["eq", "is"], ["ne", "is not"]]
  };
  // The fields with a kind of their own; an attribute's kind comes from the catalog (or the value it holds).
  var FIELD_KINDS = { category: "text", brand: "text", title: "text", price: "number", in_stock: "boolean" };
  var CHOICES = { in_stock: [["true", "in stock"], ["false", "out of stock"]], attribute: [["true", "true"], ["false", "false"]] };
  var SUGGESTED_FIELDS = { category: true, brand: true, price: true, attribute: true };
  var BLOCKABLE_FIELDS = { category: "category", brand: "brand" };
  var COUNT_DELAY_MS = 300;
  var SUGGEST_DELAY_MS = 150;
  var PHRASES = {};
  Object.keys(OPERATORS).forEach(function (kind) {
    OPERATORS[kind].forEach(function (pair) { PHRASES[pair[0]] = pair[1]; });
  });

  /*
   * What differs between an item condition and an audience: the fields with a kind of their own, the prefix of a
   * named field ("attribute": attributes.<name>, traits.<name>), where names are suggested from, whether a named
   * field's kind is chosen in the row (else it follows the catalog), whether values are suggested and items counted.
   */
  var MODES = {
    items: {
      fields: FIELD_KINDS, prefix: "attributes.", names: "attributes", kindChosen: false, counted: true,
      subject: "condition", unnamed: "Name the attribute"
    },
    audience: {
      fields: {}, prefix: "traits.", names: "traits", kindChosen: true, counted: false,
      subject: "audience", unnamed: "Name the trait"
    }
  };

  function debounce(action, delay) {
    var timer = null;
    return function () {
      var args = arguments;
      clearTimeout(timer);
      timer = setTimeout(function () { action.apply(null, args); }, delay);
    };
  }

  function formatCount(value) {
    return Number(value).toLocaleString("en");
  }

  function shown(value) {
    return typeof value === "string" ? "'" + value + "'" : JSON.stringify(value);
  }

  function kindOfValue(value) {
    if (typeof value === "boolean") { return "boolean"; }
    if (typeof value === "number") { return "number"; }
    return "text";
  }

  function catalogKind(kind) {
    return kind === "boolean" || kind === "number" ? kind : "text";
  }

  /* One stored condition as a row's state, or an Error saying why the rows cannot show it. */
  function describe(mode, entry) {
    if (entry === null || typeof entry !== "object" || Array.isArray(entry)) {
      throw new Error("each condition must be an object");
    }
    if (Object.keys(entry).sort().join(",") !== "field,op,value") {
      throw new Error("each condition has exactly \"field\", \"op\" and \"value\"");
    }
    var field = entry.field, op = entry.op, value = entry.value, kind, attribute = "";
    if (typeof field === "string" && Object.prototype.hasOwnProperty.call(mode.fields, field)) {
      kind = mode.fields[field];
    } else if (typeof field === "string" && field.indexOf(mode.prefix) === 0 && field.length > mode.prefix.length) {
      attribute = field.slice(mode.prefix.length);
      kind = kindOfValue(Array.isArray(value) ? value[0] : value);
      field = "attribute";
    } else {
      throw new Error("the field " + JSON.stringify(entry.field) + " is not one the rows offer");
    }
    if (!OPERATORS[kind].some(function (pair) { return pair[0] === op; })) {
      throw new Error("\"" + op + "\" on " + entry.field + " is not an operator the rows offer");
    }
    var fits;
    if (op === "in") {
      fits = Array.isArray(value) && value.length > 0 && value.every(function (part) {
        return typeof part === "string" && part.trim() === part && part !== "" && part.indexOf(",") < 0;
      });
    } else if (kind === "number") {
      fits = typeof value === "number" && isFinite(value);
    } else if (kind === "boolean") {
      fits = typeof value === "boolean";
    } else {
      fits = typeof value === "string" && value !== "";
    }
    if (!fits) {
      throw new Error("the value of " + entry.field + " (" + JSON.stringify(value) + ") is not one the rows can show");
    }
    return { field: field, attribute: attribute, kind: kind, op: op, value: value };
  }

  /* The box's JSON as rows' states; throws an Error saying why when the rows cannot show it. */
  function parseRows(mode, text) {
    var trimmed = text.trim();
    if (trimmed === "") { return []; }
    var raw;
    try {
      raw = JSON.parse(trimmed);
    } catch (error) {
      throw new Error("it is not valid JSON");
    }
    if (raw === null || (typeof raw === "object" && !Array.isArray(raw) && Object.keys(raw).length === 0)) { return []; }
    return (Array.isArray(raw) ? raw : [raw]).map(describe.bind(null, mode));
  }

  /* Who an audience is, in a sentence: "The rule applies to users whose age is under 18." */
  function audienceSentence(conditions) {
    if (conditions.length === 0) { return "The rule applies to every user."; }
    var clauses = conditions.map(function (condition) {
      var name = condition.field.slice(MODES.audience.prefix.length);
      var value = condition.op === "in" ? condition.value.map(shown).join(" or ") : shown(condition.value);
      var clause = "whose " + name + " " + PHRASES[condition.op] + " " + value;
      // A user without the trait: "is not" holds, every other operator does not.
      return condition.op === "ne" ? clause + " (or who have no " + name + ")" : clause;
    });
    return "The rule applies to users " + clauses.join(" and ") + ".";
  }

  function Builder(root) {
    this.root = root;
    this.mode = MODES[root.dataset.mode] || MODES.items;
    this.box = document.getElementById(root.dataset.conditionBuilder);
    this.form = this.box.form;
    this.rows = root.querySelector("[data-role=rows]");
    this.empty = root.querySelector("[data-role=empty]");
    this.note = root.querySelector("[data-role=note]");
    this.actions = root.querySelector("[data-role=actions]");
    this.toggle = root.querySelector("[data-role=toggle]");
    this.countLine = root.querySelector("[data-role=count]");
    this.problemList = root.querySelector("[data-role=problems]");
    this.template = root.querySelector("[data-role=row-template]");
    this.attributeNames = root.querySelector("[data-role=attribute-names]");
    this.attributeKinds = {};
    this.rowNumber = 0;
    this.countRequest = 0;
    this.jsonMode = false;
    this.problems = [];
    this.scheduleCount = debounce(this.count.bind(this), COUNT_DELAY_MS);
    this.bind();
    this.loadNames();
    this.start();
  }

  Builder.prototype.bind = function () {
    var self = this;
    this.actions.hidden = false;
    this.root.querySelector("[data-role=add]").addEventListener("click", function () {
      var field = self.mode.counted ? "category" : "attribute";
      var row = self.addRow({ field: field, attribute: "", kind: "text", op: "eq", value: "" });
      self.changed();
      row.querySelector(field === "attribute" ? "[data-role=attribute]" : "[data-role=value]").focus();
    });
    this.toggle.addEventListener("click", function () {
      if (self.jsonMode) { self.showRows(); } else { self.showJson(""); }
    });
    this.box.addEventListener("input", function () {
      if (self.jsonMode) { self.scheduleCount(); }
    });
    this.rows.addEventListener("change", function (event) { self.rowEdited(event); });
    this.rows.addEventListener("input", function (event) { self.rowEdited(event); });
    this.rows.addEventListener("focusin", function (event) {
      if (event.target.dataset.role === "value") { self.suggest(event.target.closest("[data-role=row]")); }
    });
    this.rows.addEventListener("click", function (event) {
      if (event.target.dataset.role === "remove") {
        event.target.closest("[data-role=row]").remove();
        self.changed();
      }
    });
    this.problemList.addEventListener("click", function (event) {
      if (event.target.dataset.role === "fix") { self.fix(Number(event.target.dataset.problem)); }
    });
  };

  /* Rows when the box's JSON can be shown as rows, else the box, saying why. */
  Builder.prototype.start = function () {
    try {
      this.fillRows(parseRows(this.mode, this.box.value));
      this.setMode(false);
    } catch (error) {
      this.showJson("The rows cannot show this " + this.mode.subject + " (" + error.message + "): edit it as JSON.");
    }
    this.count();
  };

  Builder.prototype.setMode = function (jsonMode) {
    this.jsonMode = jsonMode;
    this.box.hidden = !jsonMode;
    this.rows.hidden = jsonMode;
    this.root.querySelector("[data-role=add]").hidden = jsonMode;
    this.toggle.textContent = jsonMode ? "Edit as rows" : "Edit as JSON";
    this.toggle.setAttribute("aria-pressed", jsonMode ? "true" : "false");
    this.root.classList.toggle("condition-builder-json", jsonMode);
    this.updateEmpty();
    this.renderProblems();
  };

  Builder.prototype.showJson = function (message) {
    this.setNote(message);
    this.setMode(true);
  };

  Builder.prototype.showRows = function () {
    try {
      this.fillRows(parseRows(this.mode, this.box.value));
    } catch (error) {
      this.setNote("The rows cannot show this " + this.mode.subject + " (" + error.message +
        "): fix it, or keep editing it as JSON.");
      return;
    }
    this.setNote("");
    this.setMode(false);
    this.scheduleCount();
  };

  Builder.prototype.setNote = function (message) {
    this.note.textContent = message;
    this.note.hidden = !message;
  };

  Builder.prototype.updateEmpty = function () {
    this.empty.hidden = this.jsonMode || this.rows.children.length > 0;
  };

  Builder.prototype.fillRows = function (states) {
    this.rows.textContent = "";
    states.forEach(this.addRow, this);
    this.updateEmpty();
  };

  Builder.prototype.addRow = function (state) {
    var row = this.template.content.firstElementChild.cloneNode(true);
    var suggestions = row.querySelector("[data-role=suggestions]");
    this.rowNumber += 1;
    suggestions.id = this.root.id + "_suggestions_" + this.rowNumber;
    row.querySelector("[data-role=value]").setAttribute("list", suggestions.id);
    if (this.mode.kindChosen) {
      row.querySelector("[data-role=kind]").value = state.kind;
    } else {
      row.querySelector("[data-role=field]").value = state.field;
    }
    row.querySelector("[data-role=attribute]").value = state.attribute;
    row.dataset.kind = state.kind;
    this.rows.appendChild(row);
    this.shape(row, state.op);
    this.setValue(row, state.value);
    this.refreshRow(row);
    this.updateEmpty();
    return row;
  };

  /* The operators and value input a row's field calls for, keeping `op` when the field offers it. */
  Builder.prototype.shape = function (row, op) {
    var field = this.rowField(row);
    var kind = row.dataset.kind;
    var operators = row.querySelector("[data-role=op]");
    var value = row.querySelector("[data-role=value]");
    var choice = row.querySelector("[data-role=choice]");
    row.querySelector("[data-role=attribute]").hidden = field !== "attribute";
    operators.textContent = "";
    OPERATORS[kind].forEach(function (pair) { operators.add(new Option(pair[1], pair[0])); });
    operators.value = OPERATORS[kind].some(function (pair) { return pair[0] === op; }) ? op : "eq";
    value.hidden = kind === "boolean";
    choice.hidden = kind !== "boolean";
    value.type = kind === "number" ? "number" : "text";
    value.step = "any";
    value.placeholder = operators.value === "in" ? "values, separated by commas" : "value";
    if (kind === "boolean") {
      choice.textContent = "";
      (CHOICES[field] || CHOICES.attribute).forEach(function (pair) { choice.add(new Option(pair[1], pair[0])); });
    }
    row.querySelector("[data-role=suggestions]").textContent = "";
  };

  Builder.prototype.setValue = function (row, value) {
    if (row.dataset.kind === "boolean") {
      row.querySelector("[data-role=choice]").value = value === false ? "false" : "true";
    } else {
      row.querySelector("[data-role=value]").value = Array.isArray(value) ? value.join(", ") : String(value);
    }
  };

  /* The row's field: one of FIELD_KINDS, or "attribute" (a named one: an attribute, a trait). */
  Builder.prototype.rowField = function (row) {
    var select = row.querySelector("[data-role=field]");
    return select ? select.value : "attribute";
  };

  /* The row's field name as stored ("category", "attributes.colour", "traits.age"), "" while a name is missing. */
  Builder.prototype.fieldName = function (row) {
    var field = this.rowField(row);
    if (field !== "attribute") { return field; }
    var name = row.querySelector("[data-role=attribute]").value.trim();
    return name ? this.mode.prefix + name : "";
  };

  /* The row as a stored condition, or null while it is incomplete. */
  Builder.prototype.condition = function (row) {
    var field = this.fieldName(row);
    var op = row.querySelector("[data-role=op]").value;
    var kind = row.dataset.kind;
    var text = row.querySelector("[data-role=value]").value.trim();
    var value;
    if (!field) { return null; }
    if (kind === "boolean") {
      value = row.querySelector("[data-role=choice]").value === "true";
    } else if (op === "in") {
      value = text.split(",").map(function (part) { return part.trim(); }).filter(Boolean);
      if (value.length === 0) { return null; }
    } else if (kind === "number") {
      value = text === "" ? NaN : Number(text);
      if (!isFinite(value)) { return null; }
    } else {
      if (text === "") { return null; }
      value = text;
    }
    return { field: field, op: op, value: value };
  };

  Builder.prototype.rowEdited = function (event) {
    var row = event.target.closest("[data-role=row]");
    var role = event.target.dataset.role;
    // A select reports both "input" and "change": its change alone reshapes the row.
    if (!row || (event.type === "input" && event.target.tagName === "SELECT")) { return; }
    if (role === "field" && event.type === "change") {
      var field = event.target.value;
      row.dataset.kind = field === "attribute" ? this.kindOfAttribute(row) : FIELD_KINDS[field];
      this.shape(row, row.querySelector("[data-role=op]").value);
      row.querySelector("[data-role=value]").value = "";
    } else if (role === "attribute" || (role === "kind" && event.type === "change")) {
      var kind = role === "kind" ? event.target.value : this.kindOfAttribute(row);
      if (kind !== row.dataset.kind) {
        row.dataset.kind = kind;
        if (this.mode.kindChosen) { row.querySelector("[data-role=kind]").value = kind; }
        this.shape(row, row.querySelector("[data-role=op]").value);
        row.querySelector("[data-role=value]").value = "";
      }
    } else if (role === "op") {
      row.querySelector("[data-role=value]").placeholder =
        event.target.value === "in" ? "values, separated by commas" : "value";
    } else if (role === "value" && event.type === "input") {
      this.suggest(row);
    }
    this.refreshRow(row);
    this.changed();
  };

  /* The kind of a named field's values: the catalog's (text when it has none); for a trait, the users' when they
   * agree on one, else the kind chosen in the row. */
  Builder.prototype.kindOfAttribute = function (row) {
    var known = this.attributeKinds[row.querySelector("[data-role=attribute]").value.trim()];
    if (this.mode.kindChosen && known !== "boolean" && known !== "number" && known !== "string") {
      return row.dataset.kind;
    }
    return catalogKind(known);
  };

  /* A row's hint (what is missing) and its link to block the category or brand it names. */
  Builder.prototype.refreshRow = function (row) {
    var condition = this.condition(row);
    var hint = row.querySelector("[data-role=hint]");
    var block = row.querySelector("[data-role=block]");
    hint.hidden = condition !== null;
    hint.textContent = this.fieldName(row) ? "Fill in a value: until then this row is left out." :
      this.mode.unnamed + ": until then this row is left out.";
    if (!block) { return; }
    var blockable = condition && BLOCKABLE_FIELDS[condition.field] && condition.op === "eq";
    block.hidden = !blockable;
    if (blockable) {
      block.textContent = "Block this " + condition.field + " in one step";
      block.href = this.root.dataset.blockUrl + "?" + new URLSearchParams({ field: condition.field, q: condition.value });
    }
  };

  /* The complete rows as stored conditions. */
  Builder.prototype.conditions = function () {
    var conditions = [];
    Array.prototype.forEach.call(this.rows.children, function (row) {
      var condition = this.condition(row);
      if (condition) { conditions.push(condition); }
    }, this);
    return conditions;
  };

  /* The rows written to the box (the form submits the box), then counted. */
  Builder.prototype.changed = function () {
    var conditions = this.conditions();
    var stored = conditions.length === 0 ? {} : conditions.length === 1 ? conditions[0] : conditions;
    this.box.value = JSON.stringify(stored);
    this.updateEmpty();
    this.scheduleCount();
  };

  /* The names a named field can take (attributes, or traits), with their kinds. */
  Builder.prototype.loadNames = function () {
    var self = this;
    this.fetchValues(this.mode.names, "").then(function (values) {
      values.forEach(function (found) {
        self.attributeKinds[found.value] = found.label;
        var option = new Option(found.label, found.value);
        option.label = found.label;
        self.attributeNames.appendChild(option);
      });
    }).catch(function () { /* no suggestions: names can still be typed */ });
  };

  Builder.prototype.fetchValues = function (field, prefix) {
    var url = this.root.dataset.valuesUrl + "?" + new URLSearchParams({ field: field, q: prefix });
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) { throw new Error(String(response.status)); }
        return response.json();
      })
      .then(function (body) { return body.values; });
  };

  /* Catalog values for the row's value, starting with what is typed (for "is one of", the last value). */
  Builder.prototype.suggest = function (row) {
    if (!row.suggestLater) {
      row.suggestLater = debounce(this.suggestNow.bind(this, row), SUGGEST_DELAY_MS);
    }
    row.suggestLater();
  };

  Builder.prototype.suggestNow = function (row) {
    var field = this.rowField(row);
    var name = this.fieldName(row);
    var op = row.querySelector("[data-role=op]").value;
    var list = row.querySelector("[data-role=suggestions]");
    // Items only: an audience's values are the users' own.
    if (!this.mode.counted || !SUGGESTED_FIELDS[field] || !name || row.dataset.kind === "boolean") { return; }
    var typed = row.querySelector("[data-role=value]").value;
    var parts = typed.split(",");
    var prefix = op === "in" ? parts[parts.length - 1].trim() : typed.trim();
    var before = op === "in" ? parts.slice(0, -1).map(function (part) { return part.trim(); }).filter(Boolean) : [];
    if (row.dataset.kind === "number") { prefix = ""; }
    this.fetchValues(name, prefix).then(function (values) {
      list.textContent = "";
      values.forEach(function (found) {
        var value = String(found.value);
        var option = new Option(found.label || value, before.concat([value]).join(", "));
        if (found.label) { option.label = found.label; }
        list.appendChild(option);
      });
      list.dataset.prefix = prefix;
    }).catch(function () { /* no suggestions this time */ });
  };

  /* "Matches N of M items" and the values no item has, for what the box holds now; for an audience, who it is. */
  Builder.prototype.count = function () {
    if (!this.mode.counted) {
      this.describeAudience();
      return;
    }
    var self = this;
    var request = ++this.countRequest;
    var token = this.form ? this.form.querySelector("[name=csrfmiddlewaretoken]") : null;
    this.countLine.classList.add("condition-builder-counting");
    fetch(this.root.dataset.countUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": token ? token.value : "" },
      body: this.box.value
    }).then(function (response) {
      return response.json().then(function (body) { return { ok: response.ok, body: body }; });
    }).then(function (answer) {
      if (request !== self.countRequest) { return; }
      self.showCount(answer.ok ? answer.body : null, answer.ok ? "" : answer.body.error);
    }).catch(function () {
      if (request !== self.countRequest) { return; }
      self.showCount(null, "The matching items could not be counted just now.");
    });
  };

  /* The sentence for the rows, or for the box while it is edited (nothing while the rows cannot show it). */
  Builder.prototype.describeAudience = function () {
    var conditions;
    if (this.jsonMode) {
      try {
        conditions = parseRows(this.mode, this.box.value).map(function (state) {
          return { field: this.mode.prefix + state.attribute, op: state.op, value: state.value };
        }, this);
      } catch (error) {
        conditions = null;
      }
    } else {
      conditions = this.conditions();
    }
    this.countLine.textContent = conditions ? audienceSentence(conditions) : "";
  };

  Builder.prototype.showCount = function (body, error) {
    this.countLine.classList.remove("condition-builder-counting");
    this.countLine.classList.toggle("condition-builder-warning", Boolean(error) || (body && body.matches === 0));
    if (!body) {
      this.countLine.textContent = "Not a condition yet: " + error;
      this.problems = [];
    } else {
      var about = body.estimated ? "about " : "";
      var text = "Matches " + about + formatCount(body.matches) + " of " + about + formatCount(body.total) + " items";
      if (body.estimated) { text += " (estimated from a sample: counting exactly took too long)"; }
      if (body.matches === 0 && body.total > 0) { text += ": the rule does nothing as it stands"; }
      this.countLine.textContent = text + ".";
      this.problems = body.problems;
    }
    this.renderProblems();
  };

  Builder.prototype.renderProblems = function () {
    var self = this;
    this.problemList.textContent = "";
    this.problems.forEach(function (problem, index) {
      var item = document.createElement("li");
      item.className = "condition-builder-warning";
      item.appendChild(document.createTextNode(problem.message + " "));
      if (problem.suggestion !== null && !self.jsonMode) {
        var fix = document.createElement("button");
        fix.type = "button";
        fix.className = "button";
        fix.dataset.role = "fix";
        fix.dataset.problem = String(index);
        fix.textContent = "Use " + shown(problem.suggestion);
        item.appendChild(fix);
      }
      self.problemList.appendChild(item);
    });
  };

  /* Puts the catalog's spelling in place of the value no item has, in every row that holds it. */
  Builder.prototype.fix = function (index) {
    var problem = this.problems[index];
    if (!problem) { return; }
    Array.prototype.forEach.call(this.rows.children, function (row) {
      var condition = this.condition(row);
      if (!condition || condition.field !== problem.field) { return; }
      if (condition.op === "in") {
        var parts = condition.value.map(function (part) { return part === problem.value ? problem.suggestion : part; });
        this.setValue(row, parts);
      } else if (JSON.stringify(condition.value) === JSON.stringify(problem.value)) {
        var kind = this.rowField(row) === "attribute" ? kindOfValue(problem.suggestion) : row.dataset.kind;
        if (kind !== row.dataset.kind) {
          row.dataset.kind = kind;
          this.shape(row, condition.op);
        }
        this.setValue(row, problem.suggestion);
      }
      this.refreshRow(row);
    }, this);
    this.changed();
  };

  function start() {
    Array.prototype.forEach.call(document.querySelectorAll("[data-condition-builder]"), function (root) {
      if (document.getElementById(root.dataset.conditionBuilder)) { root.conditionBuilder = new Builder(root); }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
