/* Generated from websdk/src/inapp/ by `make web` (cd websdk && npm ci && npm run build); do not edit. */
"use strict";var ClarionInApp=(()=>{var L=Object.defineProperty;var H=Object.getOwnPropertyDescriptor;var P=Object.getOwnPropertyNames;var $=Object.prototype.hasOwnProperty;var j=(e,t)=>{for(var n in t)L(e,n,{get:t[n],enumerable:!0})},I=(e,t,n,l)=>{if(t&&typeof t=="object"||typeof t=="function")for(let i of P(t))!$.call(e,i)&&i!==n&&L(e,i,{get:()=>t[i],enumerable:!(l=H(t,i))||l.enumerable});return e};var K=e=>I(L({},"__esModule",{value:!0}),e);var ee={};j(ee,{render:()=>U});var C=`
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
`;var N={background:"#FFFFFF",text:"#1F2933",header:"#52606D",title:"#1F2933",button_background:"#2563EB",button_text:"#FFFFFF",close:"#52606D",backdrop:"#00000080"},B={background:"--bg",text:"--text",header:"--header",title:"--title",button_background:"--btn-bg",button_text:"--btn-text",close:"--close",backdrop:"--backdrop"},q=/^#(?:[0-9a-f]{3,4}|[0-9a-f]{6}|[0-9a-f]{8})$/i,Y=/^[A-Za-z0-9 ,'-]{1,100}$/,G=new Set(["modal","fullscreen","image"]),V=new Set(["modal","banner_top","banner_bottom","fullscreen","image"]),Z=new Set(["javascript:","data:","vbscript:","blob:","file:"]),y;function J(e){if("adoptedStyleSheets"in e&&typeof CSSStyleSheet.prototype.replaceSync=="function")y||(y=new CSSStyleSheet,y.replaceSync(C)),e.adoptedStyleSheets=[y];else{let t=document.createElement("style");t.textContent=C,e.append(t)}}function Q(e){if(typeof e!="string"||e.length===0||e.length>2048)return null;let t;try{t=new URL(e,document.baseURI)}catch{return null}return Z.has(t.protocol)?null:t.href}function W(e){if(typeof e!="string")return null;try{let t=new URL(e);return t.protocol==="https:"?t.href:null}catch{return null}}function T(e,t,n){if(typeof n!="string"||n.length===0)return null;let l=document.createElement(e);return l.className=t,l.textContent=n,l}function R(e,t){let n=document.createElement("button");return n.type="button",n.className=e,n.textContent=t,n}function _(e,t,n,l){return typeof e=="number"&&Number.isFinite(e)?Math.min(n,Math.max(t,Math.round(e))):l}function X(e,t){let n=t.theme,l=n.colours??{};for(let u of Object.keys(N)){let m=l[u];e.style.setProperty(B[u],typeof m=="string"&&q.test(m)?m:N[u])}let i=n.font?.family;e.style.setProperty("--font",typeof i=="string"&&Y.test(i)?i:"system-ui, sans-serif"),e.style.setProperty("--size",`${_(n.font?.size,10,32,16)}px`),e.style.setProperty("--radius",`${_(n.corner_radius,0,48,12)}px`)}function U(e,t={}){let n=e.theme,l=V.has(n.layout)?n.layout:"modal",i=G.has(l),u=t.preview===!0,m=t.container??document.body,v=Array.isArray(e.actions)?e.actions:[],b=document.createElement("clarion-inapp");u&&(b.setAttribute("data-preview",""),getComputedStyle(m).position==="static"&&m.style.setProperty("position","relative"));let k=b.attachShadow({mode:"open"});J(k);let S=n.close_button==="top_left"?"cl":n.close_button==="none"?"":"cr",g=document.createElement("div");g.className=i?`root ${l}`:`root banner ${l}`,X(g,e);let r=document.createElement("div");r.className=S?`msg ${S}`:"msg",r.setAttribute("role","dialog"),r.tabIndex=-1,i&&r.setAttribute("aria-modal","true");let x=null;i&&(x=document.createElement("div"),x.className="backdrop",g.append(x)),g.append(r),k.append(g);let h=!0,w,F=i&&!u&&document.activeElement instanceof HTMLElement?document.activeElement:null;function E(){h&&(h=!1,w!==void 0&&clearTimeout(w),document.removeEventListener("keydown",z,!0),b.remove(),F?.isConnected&&F.focus())}function f(){h&&(E(),t.onClose?.())}function M(o,a){if(!h)return;E();let s={label:a.label,action:a.action,args:a.args??null},c=t.onAction?.(o,s);if(s.action==="deeplink"&&c!==!1&&!u){let p=Q(s.args?.l);p!==null&&window.location.assign(p)}}let A=W(e.image),d=A===null?null:document.createElement("img");if(d!==null&&A!==null&&(d.className="img",d.alt=e.image_description??"",d.decoding="async",d.referrerPolicy="no-referrer",d.src=A),l==="image"){let a=v[0]??(e.deeplink?{label:"image",action:"deeplink",args:{l:e.deeplink}}:null),s=R("imgbtn","");s.setAttribute("aria-label",e.image_description||e.title||a?.label||"Open"),d!==null&&s.append(d),s.addEventListener("click",()=>a===null?f():M(0,a)),r.setAttribute("aria-label",e.image_description||e.title||"Message"),r.append(s)}else{d!==null&&r.append(d);let o=document.createElement("div");o.className="content";let a=T("h2","title",e.title),s=[T("p","header",e.header),a,T("p","body",e.body)];for(let c of s)c!==null&&o.append(c);if(a!==null?(a.id="clarion-inapp-title",r.setAttribute("aria-labelledby",a.id)):r.setAttribute("aria-label",e.header||e.image_description||"Message"),r.append(o),v.length>0){let c=document.createElement("div");c.className="actions",v.forEach((p,D)=>{let O=R("cta",p.label);O.addEventListener("click",()=>M(D,p)),c.append(O)}),r.append(c)}}if(S){let o=R("close","\xD7");o.setAttribute("aria-label","Close"),o.addEventListener("click",f),r.prepend(o)}x?.addEventListener("click",f);function z(o){o.key==="Escape"&&(o.stopPropagation(),f())}if(r.addEventListener("keydown",o=>{if(o.key==="Escape")o.stopPropagation(),f();else if(o.key==="Tab"&&i){let a=Array.from(r.querySelectorAll("button"));if(a.length===0)return o.preventDefault();let s=a[0],c=a[a.length-1],p=k.activeElement;o.shiftKey&&(p===s||p===r)?(o.preventDefault(),c.focus()):!o.shiftKey&&p===c&&(o.preventDefault(),s.focus())}}),m.append(b),!u){i&&(document.addEventListener("keydown",z,!0),r.focus({preventScroll:!0}));let o=_(n.auto_close_seconds,0,120,0);!i&&o>0&&(w=setTimeout(f,o*1e3))}return{close:E,element:b}}return K(ee);})();
