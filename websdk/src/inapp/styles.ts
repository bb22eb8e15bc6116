// The message's stylesheet, inside its shadow root. Tenant values never appear in this text:
// render.ts sets them as custom properties (--bg, --font, ...) with style.setProperty.

// `!important` on :host: the page's rules win over :host ones unless both are important, and
// then the shadow tree's win (CSS Cascade 4, "context"), so `* {display: none !important}` in
// the site's stylesheet cannot hide the message. 2147483647 is the largest z-index.
export const CSS = `
:host{all:initial!important;display:block!important;position:fixed!important;inset:0!important;z-index:2147483647!important;pointer-events:none!important;visibility:visible!important;opacity:1!important;transform:none!important}
:host([data-preview]){position:absolute!important;z-index:1!important}
*{box-sizing:border-box}
.root{position:absolute;inset:0;container-type:inline-size;font-family:var(--font);font-size:var(--size);line-height:1.4;color:var(--text);text-align:start;-webkit-text-size-adjust:100%}
.backdrop{position:absolute;inset:0;background:var(--backdrop);pointer-events:auto}
.msg{position:absolute;display:flex;flex-direction:column;overflow:auto;pointer-events:auto;background:var(--bg);color:var(--text);border-radius:var(--radius);box-shadow:0 8px 32px #0004;outline:none}
.modal .msg,.image .msg{left:50%;top:50%;transform:translate(-50%,-50%);width:min(92%,420px);max-height:92%}
.fullscreen .msg{inset:0;border-radius:0;justify-content:center}
.banner .msg{left:12px;right:12px;margin:0 auto;max-width:640px;max-height:60%;flex-direction:row;align-items:center}
.banner_top .msg{top:12px}
.banner_bottom .msg{bottom:12px}
.image .msg{background:none;box-shadow:none}
.img{display:block;width:100%;max-height:40vh;object-fit:cover}
.modal .img{border-radius:var(--radius) var(--radius) 0 0}
.banner .img{width:56px;height:56px;margin-left:12px;flex:none;border-radius:8px}
.banner .cl .img{margin-left:48px}
.image .img{max-height:88vh;object-fit:contain;border-radius:var(--radius)}
.content{padding:20px 20px 0;min-width:0;flex:1 1 auto}
.fullscreen .content{flex:none}
.banner .content{padding:12px 16px}
.cr .content{padding-right:48px}
.cl .content{padding-left:48px}
.cr .img+.content{padding-right:20px}
.cl .img+.content{padding-left:20px}
.banner .img+.content{padding:12px 16px}
.header{margin:0 0 4px;color:var(--header);font-size:.85em;font-weight:600}
.title{margin:0 0 8px;color:var(--title);font-size:1.3em;font-weight:700;line-height:1.25}
.body{margin:0;white-space:pre-line}
.header,.title,.body{overflow-wrap:anywhere}
.actions{display:flex;flex-wrap:wrap;gap:8px;padding:16px 20px 20px}
.banner .actions{flex-direction:column;flex:none;padding:12px 16px 12px 0}
.banner .cr .actions{padding-right:48px}
.banner .cr .content{padding-right:16px}
button{font:inherit;margin:0;border:0;cursor:pointer;-webkit-appearance:none;appearance:none;text-transform:none;letter-spacing:normal}
.cta{flex:1 1 auto;padding:10px 16px;border-radius:min(var(--radius),10px);background:var(--btn-bg);color:var(--btn-text);font-weight:600;line-height:1.25}
.close{position:absolute;top:6px;right:6px;z-index:1;width:36px;height:36px;padding:0;border-radius:50%;background:var(--bg);color:var(--close);font-size:26px;line-height:36px;text-align:center}
.cl .close{right:auto;left:6px}
.imgbtn{display:block;width:100%;padding:0;background:none;border-radius:var(--radius)}
button:focus-visible{outline:3px solid var(--btn-bg);outline-offset:2px}
@container (max-width:480px){.banner .msg{flex-wrap:wrap}.banner .content{flex-basis:calc(100% - 80px)}.banner .msg .actions{flex-direction:row;width:100%;padding:0 16px 12px}.banner .cr .content{padding-right:48px}}
@media (forced-colors:active){.msg{border:1px solid CanvasText}}
`;
