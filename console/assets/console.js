// anika console: the one script of its own (besides htmx), loaded from the server
// under the CSP. Copy buttons: `<button type="button" data-copy="ID">` copies the
// value of the field #ID, or selects it where the clipboard is not allowed.
document.addEventListener('click', function (event) {
  var button = event.target.closest('button[data-copy]');
  if (!button) {
    return;
  }
  var field = document.getElementById(button.getAttribute('data-copy'));
  if (!field) {
    return;
  }
  field.select();
  var say = function (text) { button.textContent = text; };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(field.value).then(
      function () { say('Copied'); },
      function () { say('Selected: press Ctrl+C'); }
    );
  } else {
    say('Selected: press Ctrl+C');
  }
});
