export default definePageConfig({
  navigationBarTitleText: 'small model'
})
